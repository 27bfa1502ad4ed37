// The run page: a live grid of the run's commits and, for the chosen one, its forensics and log.

import { api } from "./api.js";
import { LiveLogs, LogView, StoredLog, readInto } from "./logview.js";
import { RunState } from "./runstate.js";
import {
  FINAL,
  announce,
  bytes,
  duration,
  el,
  fromTemplate,
  part,
  plural,
  repoName,
  setBadge,
  setText,
  shortSha,
  testsText,
  timeElement,
} from "./ui.js";

// Statuses whose reason says why the tests did not run through.
const NOT_RUN_THROUGH = new Set(["error", "timeout", "skipped", "cancelled"]);

// Commits cut short or never run (cancelled, skipped) carry no duration: none, not "0.0 s".
const took = (result) => (result.duration_s ? duration(result.duration_s) : "");

export function runPage(main, runId, { live }) {
  const page = new RunPage(main, runId);
  page.load(live);
  return { leave: () => page.close() };
}

class RunPage {
  constructor(main, runId) {
    this.state = new RunState(runId);
    this.logs = new LiveLogs();
    this.root = fromTemplate("run-page");
    this.cards = [];
    this.picked = decodeURIComponent(location.hash.slice(1)) || null; // chosen by the user
    this.shown = null; // the commit in the detail pane
    this.stored = null; // {sha, log, controller, done}: the whole stored log being viewed
    this.archived = false; // finished before the page opened: logs come from the store
    this.unsubscribe = () => {};
    this.closed = false;
    this.frame = 0;
    this.openedAt = Date.now() / 1000;
    this.logView = new LogView("Log");
    part(this.root, "log-host").append(this.logView.element);
    part(this.root, "load-log").addEventListener("click", () => {
      this.loadWholeLog();
      this.render();
      this.logView.element.focus(); // the button goes away
    });
    part(this.root, "cancel").addEventListener("click", () => this.cancel());
    part(this.root, "show-first-bad").addEventListener("click", () => this.pick(this.state.firstBad, true));
    part(this.root, "commits").addEventListener("keydown", (event) => this.arrowKeys(event));
    main.append(this.root);
    this.ticker = setInterval(() => this.tick(), 1000);
  }

  // A finished run is read from the store; a live one replays and follows its events.
  async load(live) {
    try {
      this.state.applySummary(await api.run(this.state.runId));
    } catch (error) {
      const missing = error.status === 404; // or someone else's: the server does not say which
      if (missing) document.title = "Run not found · committee";
      const notFound = `Run not found: there is no run ${this.state.runId}, or it is not yours.`;
      this.fail(missing ? notFound : error.message);
      return;
    }
    this.archived = this.state.final;
    if (!this.archived && !this.closed) {
      this.unsubscribe = live.subscribe(this.state.runId, {
        onEvent: (event) => this.apply(event),
        onError: (error) => this.fail(error.message),
      });
    }
    this.refresh();
  }

  close() {
    this.closed = true;
    this.unsubscribe();
    clearInterval(this.ticker);
    cancelAnimationFrame(this.frame);
    this.stored?.controller.abort();
  }

  fail(message) {
    const alert = part(this.root, "error");
    alert.hidden = false;
    setText(alert, message);
  }

  apply(event) {
    const changed = this.state.apply(event);
    if (event.type === "commit.log") {
      const lines = event.stream === "system" ? event.lines.map((l) => `\x1b[36m${l}\x1b[0m`) : event.lines;
      this.logs.append(event.commit, lines);
      if (this.shown?.sha === event.commit && !this.stored) this.logView.refresh();
    }
    if (event.ts >= this.openedAt) this.announce(event);
    if (changed !== "log" || event.commit === this.shown?.sha) this.refresh();
  }

  announce(event) {
    if (event.type === "commit.finished") announce(`Commit ${shortSha(event.commit)} ${event.status}.`);
    if (event.type === "run.finished") announce(`Run finished: ${event.status}.`);
  }

  refresh() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  tick() {
    if (this.state.commits.some((c) => c.status === "running")) this.refresh();
  }

  render() {
    this.frame = 0;
    if (!this.state.run) return;
    part(this.root, "body").hidden = false;
    this.renderHeader();
    this.renderCommits();
    this.renderDetail();
  }

  renderHeader() {
    const { run } = this.state;
    setBadge(part(this.root, "status"), run.status);
    setText(part(this.root, "repo"), repoName(run.repo_url));
    setText(part(this.root, "repo-url"), run.repo_url);
    setText(part(this.root, "command"), run.test_command);
    setText(part(this.root, "type"), run.project_type);
    setText(part(this.root, "who"), run.user_id);
    setText(part(this.root, "run-id"), this.state.runId);
    const created = part(this.root, "created");
    if (run.created_at) created.replaceChildren(timeElement(run.created_at));
    setText(part(this.root, "elapsed"), this.elapsed());
    part(this.root, "cancel").hidden = this.state.final;
    document.title = `${run.status} · ${repoName(run.repo_url)} · committee`;
    this.renderFirstBad();
  }

  elapsed() {
    const { run } = this.state;
    if (!run.created_at) return "";
    const end = run.finished_at ?? (this.state.final ? run.created_at : Date.now() / 1000);
    return duration(Math.max(0, end - run.created_at));
  }

  renderFirstBad() {
    const banner = part(this.root, "first-bad");
    const bad = this.state.firstBad && this.state.commitBySha(this.state.firstBad);
    banner.hidden = !bad;
    if (!bad) return;
    setText(part(banner, "first-bad-sha"), shortSha(bad.sha));
    setText(part(banner, "first-bad-subject"), bad.subject);
    const newly = this.state.run.newly_failing ?? [];
    setText(
      part(banner, "first-bad-newly"),
      newly.length ? `${plural(newly.length, "test")} began failing here.` : "",
    );
  }

  renderCommits() {
    const list = part(this.root, "commits");
    this.state.commits.forEach((commit, index) => {
      if (!this.cards[index]) {
        this.cards[index] = fromTemplate("commit-card");
        part(this.cards[index], "button").addEventListener("click", () =>
          this.pick(this.state.commits[index].sha, true),
        );
        list.append(this.cards[index]);
      }
      this.renderCard(this.cards[index], commit);
    });
  }

  renderCard(card, commit) {
    const result = commit.result;
    const isFirstBad = commit.sha === this.state.firstBad;
    card.className = `commit status-${commit.status}${isFirstBad ? " first-bad" : ""}`;
    setBadge(part(card, "badge"), commit.status);
    setText(part(card, "sha"), shortSha(commit.sha));
    setText(part(card, "subject"), commit.subject || commit.ref);
    part(card, "subject").title = commit.subject;
    part(card, "flag").hidden = !isFirstBad;
    setText(part(card, "tests"), result ? testsText(result.tests) : "");
    setText(part(card, "duration"), this.commitDuration(commit));
    part(card, "cached").hidden = !result?.cached;
  }

  commitDuration(commit) {
    if (commit.result) return took(commit.result);
    if (commit.status === "running" && commit.startedAt)
      return duration(Math.max(0, Date.now() / 1000 - commit.startedAt));
    return "";
  }

  // Left/right/up/down move between commits, like a grid; Tab still visits each one.
  arrowKeys(event) {
    const steps = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -this.columns(), ArrowDown: this.columns() };
    const index = this.cards.findIndex((card) => card.contains(document.activeElement));
    if (!(event.key in steps) || index < 0) return;
    const next = this.cards[index + steps[event.key]];
    if (!next) return;
    event.preventDefault();
    part(next, "button").focus();
  }

  columns() {
    const list = part(this.root, "commits");
    return getComputedStyle(list).gridTemplateColumns.split(" ").length;
  }

  pick(sha, byUser) {
    if (!sha) return;
    this.picked = sha;
    history.replaceState(history.state, "", `#${encodeURIComponent(sha)}`);
    this.render();
    if (byUser) part(this.root, "detail").scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  // The user's choice; else the first bad commit; else what is running now; else the first
  // commit that went wrong; else the one already shown (a cancelled run keeps it in view);
  // else the only commit there is.
  chosen() {
    const { state } = this;
    const wrong = ["failed", "error", "timeout"];
    return (
      (this.picked && state.commitBySha(this.picked)) ||
      (state.firstBad && state.commitBySha(state.firstBad)) ||
      state.commits.find((c) => c.status === "running") ||
      state.commits.find((c) => wrong.includes(c.status)) ||
      (this.shown && state.commitBySha(this.shown.sha)) ||
      (state.commits.length === 1 ? state.commits[0] : null)
    );
  }

  renderDetail() {
    const commit = this.chosen();
    const detail = part(this.root, "detail");
    detail.hidden = !commit;
    part(this.root, "no-detail").hidden = Boolean(commit) || !this.state.commits.length;
    if (!commit) return;
    if (commit.sha !== this.shown?.sha) this.showCommit(commit);
    this.shown = commit;
    detail.className = `panel detail status-${commit.status}`;
    const index = this.state.commits.indexOf(commit);
    this.cards.forEach((card, i) => part(card, "button").setAttribute("aria-pressed", String(i === index)));
    setText(part(detail, "title"), `${shortSha(commit.sha)} ${commit.subject || commit.ref}`);
    setBadge(part(detail, "detail-status"), commit.status);
    setText(part(detail, "detail-facts"), this.facts(commit));
    const reason = part(detail, "reason");
    reason.hidden = !commit.result?.reason;
    reason.dataset.label = NOT_RUN_THROUGH.has(commit.status) ? "Why" : "Notes";
    setText(reason, commit.result?.reason);
    if (commit.result !== this.shownResult) this.renderFailures(commit);
    this.renderLogInfo(commit);
  }

  showCommit(commit) {
    this.stored?.controller.abort();
    this.stored = null;
    this.shownResult = undefined;
    this.logView.element.setAttribute("aria-label", `Log of ${shortSha(commit.sha)}`);
    if (this.archived) this.loadWholeLog(commit);
    else this.logView.show(this.logs.of(commit.sha));
  }

  facts(commit) {
    const r = commit.result;
    const parts = [commit.ref && commit.ref !== commit.sha ? `ref ${commit.ref}` : "", shortSha(commit.sha)];
    if (r) {
      parts.push(testsText(r.tests) || "no test report", took(r));
      if (r.exit_code !== null && r.exit_code !== undefined) parts.push(`exit code ${r.exit_code}`);
      if (r.cached) parts.push("cached result");
    } else if (commit.status === "running") parts.push(`running for ${this.commitDuration(commit)}`);
    return parts.filter(Boolean).join(" · ");
  }

  renderFailures(commit) {
    this.shownResult = commit.result;
    const failures = commit.result?.failures ?? [];
    const isFirstBad = commit.sha === this.state.firstBad;
    const newly = new Set(isFirstBad ? (this.state.run.newly_failing ?? []) : []);
    const section = part(this.root, "failures");
    section.hidden = !failures.length;
    setText(part(section, "failures-title"), plural(failures.length, "failed test"));
    part(section, "failures-list").replaceChildren(...failures.map((f) => failureItem(f, newly.has(f.name))));
    const began = part(this.root, "newly");
    began.hidden = !newly.size;
    part(began, "newly-list").replaceChildren(
      ...[...newly].map((name) => el("li", {}, el("code", {}, name))),
    );
  }

  renderLogInfo(commit) {
    const info = part(this.root, "log-info");
    const button = part(this.root, "load-log");
    // Only worth offering when the page had to let go of lines the store still has.
    button.hidden = !FINAL.has(commit.status) || Boolean(this.stored) || !this.logs.of(commit.sha).dropped;
    if (this.stored) {
      const { log, done, error } = this.stored;
      this.logView.setEmptyText(done ? "The stored log is empty." : "Loading…");
      const loaded = `${plural(log.length, "line")}, ${bytes(log.size)}${done ? "" : " so far…"}`;
      setText(info, error ? `Could not load the log: ${error}` : `Stored log: ${loaded}`);
      return;
    }
    const lines = this.logs.of(commit.sha);
    this.logView.setEmptyText(
      { queued: "Not started yet.", running: "No output yet." }[commit.status] ?? "No output.",
    );
    const dropped = lines.dropped
      ? ` (${lines.dropped.toLocaleString()} earlier lines not kept in the page)`
      : "";
    setText(info, `${plural(lines.length, "line")}${dropped}`);
  }

  async loadWholeLog(commit = this.shown) {
    const stored = {
      sha: commit.sha,
      log: new StoredLog(),
      controller: new AbortController(),
      done: false,
      error: "",
    };
    this.stored = stored;
    this.logView.show(stored.log);
    try {
      const response = await api.log(this.state.runId, commit.sha, stored.controller.signal);
      await readInto(response, stored.log, () => {
        this.logView.refresh();
        this.refresh();
      });
      stored.done = true;
    } catch (error) {
      if (error.name === "AbortError") return;
      stored.error = error.message;
    }
    this.refresh();
  }

  async cancel() {
    if (!confirm("Cancel this run? Commits not finished yet will not be tested.")) return;
    try {
      await api.cancel(this.state.runId);
    } catch (error) {
      this.fail(error.message);
    }
  }
}

function failureItem(failure, isNew) {
  return el(
    "li",
    { class: "failure" },
    el(
      "p",
      { class: "failure-name" },
      el("code", {}, failure.name),
      isNew ? el("span", { class: "new-flag" }, "began failing here") : null,
    ),
    failure.message ? el("pre", { class: "failure-message" }, failure.message) : null,
    failure.traceback
      ? el(
          "details",
          { class: "traceback" },
          el("summary", {}, "Traceback"),
          el("pre", {}, failure.traceback),
        )
      : null,
  );
}
