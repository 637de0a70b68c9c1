// mailqueue's dashboard: polls dashboard.json every MONITOR["REFRESH"] seconds and lists the dead letters.
// Plain JS, no build step. Every figure and text from the server goes into the page through textContent
// (subjects and reasons are whatever a sender or a provider wrote), never through innerHTML.
"use strict";

(function () {
  const root = document.getElementById("dashboard");
  if (!root) return;
  const urls = {
    overview: root.dataset.overviewUrl,
    dead: root.dataset.deadUrl,
    requeue: root.dataset.requeueUrl,
    purge: root.dataset.purgeUrl,
    requeueOne: root.dataset.requeueOneUrl,
  };
  const canRequeue = root.dataset.canRequeue === "1";
  let refresh = Number(root.dataset.refresh) || 5;
  const csrfToken = root.querySelector("[name=csrfmiddlewaretoken]").value;
  const status = document.getElementById("status");

  // ---- small helpers -------------------------------------------------------------------------------------------

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function row(cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) tr.appendChild(cell);
    return tr;
  }

  function num(value, className) {
    return el("td", value === null || value === undefined ? "–" : value.toLocaleString(), "num " + (className || ""));
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return "< 1 s";
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    return Math.floor(seconds / 86400) + " d " + Math.floor((seconds % 86400) / 3600) + " h";
  }

  function clock(epoch) {
    return new Date(epoch * 1000).toLocaleTimeString();
  }

  function fill(tbody, rows, emptyText, columns) {
    const fresh = document.createElement("tbody");
    for (const tr of rows) fresh.appendChild(tr);
    if (!rows.length) {
      const td = el("td", emptyText, "empty");
      td.colSpan = columns;
      fresh.appendChild(row([td]));
    }
    tbody.replaceWith(fresh);
  }

  function facts(dl, pairs) {
    dl.replaceChildren();
    for (const [term, value, className] of pairs) {
      dl.appendChild(el("dt", term));
      dl.appendChild(el("dd", value, className));
    }
  }

  // One request at a time: a slow server is not piled on by polls, and a poll never crosses an action.
  let line = Promise.resolve();

  function request(url, init) {
    const turn = line.then(async () => {
      const response = await fetch(url, { credentials: "same-origin", ...init });
      const body = await response.json().catch(() => ({}));
      return { response, body };
    });
    line = turn.catch(() => undefined);
    return turn;
  }

  function getJSON(url) {
    return request(url, { headers: { Accept: "application/json" } });
  }

  // ---- the live part: dashboard.json ---------------------------------------------------------------------------

  function queueRow(queue) {
    const pool = el("td", queue.pool ? queue.pool + " (" + queue.processes + " × " + queue.threads + " threads)"
      : "no pool", queue.pool ? "" : "muted");
    pool.appendChild(el("span", queue.strategy, "note"));
    const oldest = el("td", duration(queue.oldest_age), "num");
    if (queue.oldest_enqueued_at) oldest.title = "queued at " + clock(queue.oldest_enqueued_at);
    return row([
      el("th", queue.queue),
      pool,
      num(queue.ready, queue.ready ? "busy" : ""),
      num(queue.in_progress),
      num(queue.delayed),
      num(queue.dead, queue.dead ? "bad" : ""),
      oldest,
      num(queue.sent_1m),
      num(queue.sent_1h),
      num(queue.desired_workers),
    ]);
  }

  function circuitCell(provider) {
    const td = document.createElement("td");
    const badge = el("span", provider.state, "badge " + provider.state);
    td.appendChild(badge);
    const notes = [];
    if (provider.state === "open" && provider.probe_in !== null) notes.push("probe in " + duration(provider.probe_in));
    if (provider.failures) notes.push(provider.failures + " failure" + (provider.failures === 1 ? "" : "s") + " in a row");
    if (notes.length) td.appendChild(el("span", notes.join(", "), "note"));
    return td;
  }

  function pairCell(sent, failed) {
    const td = el("td", null, "num");
    td.appendChild(el("span", sent.toLocaleString()));
    td.appendChild(document.createTextNode(" / "));
    td.appendChild(el("span", failed.toLocaleString(), failed ? "bad" : "muted"));
    return td;
  }

  function rateCell(limits) {
    const td = document.createElement("td");
    if (!limits || !limits.length) {
      td.textContent = "no limit";
      td.className = "muted";
      return td;
    }
    for (const limit of limits) {
      const text = limit.wait > 0
        ? limit.limit + ": wait " + limit.wait.toFixed(2) + " s"
        : limit.limit + ": " + limit.tokens.toFixed(1) + " token" + (limit.tokens === 1 ? "" : "s") + " free";
      td.appendChild(el("div", text, limit.wait > 0 ? "warn" : ""));
    }
    return td;
  }

  function quotaCell(provider) {
    if (!provider.quota) return el("td", "none", "muted");
    const td = document.createElement("td");
    td.appendChild(el("div", provider.quota_used.toLocaleString() + " of " + provider.quota,
      provider.quota_left === 0 ? "bad" : ""));
    td.appendChild(el("span", provider.quota_left.toLocaleString() + " left, resets in " +
      duration(provider.quota_resets_in), "note"));
    return td;
  }

  function providerRow(provider) {
    const max = provider.max_concurrency;
    const flight = el("td", provider.in_flight + (max === null ? "" : " / " + max), "num");
    if (max !== null && provider.in_flight >= max) flight.classList.add("warn");
    return row([
      el("th", provider.provider),
      circuitCell(provider),
      pairCell(provider.sent_5m, provider.failed_5m),
      pairCell(provider.sent_1h, provider.failed_1h),
      flight,
      rateCell(provider.rate_limits),
      quotaCell(provider),
    ]);
  }

  let lastDead = null;

  function show(data) {
    fill(document.querySelector("#queues tbody"), data.queues.map(queueRow), "no queues configured", 10);
    fill(document.querySelector("#providers tbody"), data.providers.map(providerRow), "no providers", 7);
    facts(document.getElementById("outbox"), [
      data.outbox.waiting === null
        ? ["waiting", "unknown (its database cannot be read)", "warn"]
        : ["waiting", data.outbox.waiting.toLocaleString(), data.outbox.waiting ? "warn" : ""],
      ["oldest", duration(data.outbox.oldest_age)],
    ]);
    const writer = data.writer;
    facts(document.getElementById("writer"), writer.group_exists
      ? [
        ["unwritten events", writer.unwritten === null ? "unknown (stream trimmed)" : writer.unwritten.toLocaleString()],
        ["lag", duration(writer.oldest_age), writer.oldest_age > 60 ? "warn" : ""],
        ["stream length", writer.stream_length.toLocaleString()],
      ]
      : [
        ["writer", "not started yet (manage.py mailqueue log)", "warn"],
        ["events waiting", writer.stream_length.toLocaleString()],
      ]);
    // The dead-letter list follows the dead counts: reloaded when they change, not scanned at every poll.
    const dead = data.queues.reduce((sum, queue) => sum + queue.dead, 0);
    if (lastDead !== null && dead !== lastDead) loadDead();
    lastDead = dead;
  }

  function setStatus(kind, text) {
    status.className = "status " + kind;
    status.textContent = text;
    root.classList.toggle("stale", kind === "stale");
  }

  let lastGood = null;

  async function poll() {
    try {
      const { response, body } = await getJSON(urls.overview);
      if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
      show(body);
      if (typeof body.refresh === "number" && body.refresh > 0) refresh = body.refresh;
      lastGood = body.at;
      setStatus("live", "live · " + clock(body.at) + " · every " + refresh + " s");
    } catch (error) {
      const since = lastGood === null ? "" : " · figures from " + clock(lastGood);
      setStatus("stale", "stale: " + error.message + since);
    }
    window.setTimeout(poll, refresh * 1000);
  }

  // ---- dead letters --------------------------------------------------------------------------------------------

  const form = document.getElementById("dead-filter");
  const summary = document.getElementById("dead-summary");
  const result = document.getElementById("dead-result");
  const requeueAll = document.getElementById("requeue-all");
  const purgeAll = document.getElementById("purge-all");
  // The filter the list shows, the count it matched, and what pins those letters (the newest time of death and
  // the digest of their ids): what the bulk buttons confirm and post, so the server acts on exactly these.
  let applied = new URLSearchParams();
  let matched = 0;
  let asOf = null;
  let digest = "";
  // A bulk action in flight: its buttons stay disabled, so a double click cannot post it twice.
  let acting = false;

  function setBulkButtons() {
    for (const [button, verb] of [[requeueAll, "Requeue"], [purgeAll, "Purge"]]) {
      if (!button) continue;
      button.disabled = acting || matched === 0;
      button.textContent = verb + " all " + matched.toLocaleString() + " matching…";
    }
  }

  function formFilter() {
    const params = new URLSearchParams();
    for (const name of ["queue", "provider", "error_type"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    const amount = form.elements.older_than.value;
    if (amount !== "") params.set("older_than", String(Number(amount) * Number(form.elements.unit.value)));
    return params;
  }

  function describe(params) {
    const parts = [];
    for (const [name, value] of params) {
      parts.push(name === "older_than" ? "older than " + duration(Number(value)) : name.replace("_", " ") + " " + value);
    }
    return parts.length ? parts.join(", ") : "no filter";
  }

  function report(text, kind) {
    result.hidden = false;
    result.className = "result " + kind;
    result.textContent = text;
  }

  function letterRow(letter) {
    const died = el("td", duration(letter.age) + " ago", "nowrap");
    died.title = new Date(letter.failed_at * 1000).toLocaleString();
    // Long texts are cut to one line (a cell's max-width does not hold in a table): the whole one is the tooltip.
    const reason = document.createElement("td");
    const reasonText = reason.appendChild(el("div", letter.reason, "clip"));
    reasonText.title = letter.reason;
    const subject = document.createElement("td");
    const subjectText = subject.appendChild(el("div", null, "clip"));
    subjectText.title = letter.subject;
    if (letter.log_url) {
      const link = subjectText.appendChild(el("a", letter.subject || "(no subject)"));
      link.href = letter.log_url;
    } else {
      subjectText.textContent = letter.subject || "(no subject)";
      subjectText.title = (letter.subject ? letter.subject + " " : "") + "(not in the message log)";
    }
    const actions = document.createElement("td");
    if (canRequeue) {
      const button = el("button", "Requeue", "small");
      button.type = "button";
      button.addEventListener("click", () => requeueOne(letter, button));
      actions.appendChild(button);
    }
    return row([
      died,
      el("td", letter.queue),
      el("td", letter.provider || "–", letter.provider ? "" : "muted"),
      el("td", letter.error_type, "code"),
      reason,
      subject,
      num(letter.attempts),
      actions,
    ]);
  }

  async function loadDead() {
    const params = applied;
    try {
      const { response, body } = await getJSON(urls.dead + "?" + params.toString());
      if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
      if (params !== applied) return; // a newer filter was applied meanwhile
      matched = body.total;
      asOf = body.as_of;
      digest = body.digest;
      const shown = body.letters.length;
      summary.textContent = matched.toLocaleString() + " dead letter" + (matched === 1 ? "" : "s") + " match (" +
        describe(params) + ")" + (shown < matched ? "; the newest " + shown + " are listed" : "");
      setBulkButtons();
      fill(document.querySelector("#dead-letters tbody"), body.letters.map(letterRow), "no dead letters match", 8);
      const types = document.getElementById("error-types");
      types.replaceChildren();
      for (const type of new Set(body.letters.map((letter) => letter.error_type))) {
        const option = document.createElement("option");
        option.value = type;
        types.appendChild(option);
      }
    } catch (error) {
      summary.textContent = "dead letters could not be read: " + error.message;
    }
  }

  function post(url, params) {
    return request(url, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
      body: params,
    });
  }

  async function bulk(kind) {
    if (acting) return;
    const verb = kind === "requeue" ? "Requeue" : "Purge (delete for good)";
    // Taken before the dialog: a reload while it is open must not change what the click confirms.
    const count = matched;
    const params = new URLSearchParams(applied);
    params.set("count", String(count));
    params.set("digest", digest);
    if (asOf !== null) params.set("failed_before", String(asOf));
    if (!window.confirm(verb + " all " + count + " dead letters matching " + describe(applied) + "?")) return;
    acting = true;
    setBulkButtons();
    try {
      const { response, body } = await post(kind === "requeue" ? urls.requeue : urls.purge, params);
      if (response.status === 409) {
        report(body.error + ". The list is reloaded: check it and confirm again.", "warn");
      } else if (!response.ok) {
        report(body.error || "HTTP " + response.status, "bad");
      } else if (kind === "requeue") {
        const unreadable = body.unreadable.length;
        report("Requeued " + body.requeued + " of " + body.matching + " matching dead letters" +
          (unreadable ? "; " + unreadable + " could not be read (purge those instead)" : "") + ".",
        unreadable ? "warn" : "good");
      } else {
        report("Purged " + body.purged + " of " + body.matching + " matching dead letters.", "good");
      }
    } catch (error) {
      report("Nothing done: " + error.message, "bad");
    }
    acting = false;
    setBulkButtons();
    loadDead();
  }

  async function requeueOne(letter, button) {
    button.disabled = true;
    try {
      const { response, body } = await post(urls.requeueOne.replace("LETTER", encodeURIComponent(letter.id)),
        new URLSearchParams());
      report(response.ok ? "Requeued “" + (letter.subject || letter.id) + "”." : body.error || "HTTP " + response.status,
        response.ok ? "good" : "bad");
    } catch (error) {
      report("Nothing done: " + error.message, "bad");
    }
    loadDead();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    applied = formFilter();
    loadDead();
  });
  form.addEventListener("reset", () => {
    applied = new URLSearchParams();
    window.setTimeout(loadDead, 0);
  });
  if (requeueAll) requeueAll.addEventListener("click", () => bulk("requeue"));
  if (purgeAll) purgeAll.addEventListener("click", () => bulk("purge"));

  poll();
  loadDead();
})();
