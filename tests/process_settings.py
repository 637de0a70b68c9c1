"""Settings for worker processes a test starts: the test's MAILERS and MAILQUEUE, passed as JSON.

A test configures itself with the ``configure`` fixture (in-process); the
worker processes it starts must see the same configuration, so it travels in
the ``MAILQUEUE_TEST_SETTINGS`` environment variable.
"""

import json
import os

from tests.settings import *  # noqa: F403

_given = json.loads(os.environ["MAILQUEUE_TEST_SETTINGS"])
MAILERS = _given["MAILERS"]
MAILQUEUE = _given["MAILQUEUE"]
