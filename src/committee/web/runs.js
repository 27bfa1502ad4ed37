// The home page: a form to start a run, and the user's runs, newest first, kept current.

import { api } from "./api.js";
import { FINAL, countsText, fromTemplate, part, repoName, setBadge, setText, timeElement } from "./ui.js";

const BUSY_POLL_MS = 2_000; // while a run is going
const IDLE_POLL_MS = 5_000; // runs may also start from the CLI or a chat bot
const FORM_KEY = "committee.form";

export function runsPage(main, { navigate }) {
  const root = fromTemplate("runs-page");
  main.append(root);
  setUpForm(part(root, "form"), navigate);
  const list = new RunsList(part(root, "runs"), part(root, "runs-error"), part(root, "runs-empty"));
  list.poll();
  return { leave: () => list.stop() };
}

function setUpForm(form, navigate) {
  const saved = JSON.parse(localStorage.getItem(FORM_KEY) ?? "{}");
  for (const [name, value] of Object.entries(saved))
    if (form.elements[name]) form.elements[name].value = value;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = part(form, "form-error");
    const button = part(form, "submit");
    error.hidden = true;
    button.disabled = true;
    setText(button, "Starting…");
    try {
      const { run_id: runId } = await api.submit(runRequest(form));
      navigate(`/runs/${encodeURIComponent(runId)}`);
    } catch (failure) {
      error.hidden = false;
      setText(error, `Could not start the run: ${failure.message}`);
      error.focus();
    } finally {
      button.disabled = false;
      setText(button, "Start run");
    }
  });
}

// The form's fields as a RunRequest (the same fields as config.json); remembered for next time.
function runRequest(form) {
  const value = (name) => form.elements[name].value.trim();
  const request = {
    repo_url: value("repo_url"),
    commits: value("commits") || "HEAD",
    test_command: value("test_command"),
    project_type: value("project_type") || "python",
  };
  localStorage.setItem(FORM_KEY, JSON.stringify(request));
  if (value("timeout_s")) request.timeout_s = Number(value("timeout_s"));
  if (form.elements.no_cache.checked) request.no_cache = true;
  return request;
}

class RunsList {
  constructor(tbody, error, empty) {
    this.tbody = tbody;
    this.error = error;
    this.empty = empty;
    this.rows = new Map();
    this.timer = 0;
    this.stopped = false;
    this.onVisible = () => {
      if (!document.hidden) this.poll();
    };
    document.addEventListener("visibilitychange", this.onVisible);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    document.removeEventListener("visibilitychange", this.onVisible);
  }

  async poll() {
    clearTimeout(this.timer);
    let busy = false;
    try {
      const runs = await api.runs();
      busy = runs.some((run) => !FINAL.has(run.status));
      this.render(runs);
      this.error.hidden = true;
    } catch (failure) {
      this.error.hidden = false;
      setText(this.error, `Could not list runs: ${failure.message}`);
    }
    if (this.stopped || document.hidden) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.poll(), busy ? BUSY_POLL_MS : IDLE_POLL_MS);
  }

  render(runs) {
    this.empty.hidden = runs.length > 0;
    this.tbody.closest("table").hidden = !runs.length;
    const wanted = new Set(runs.map((run) => run.run_id));
    for (const [runId, row] of this.rows) {
      if (wanted.has(runId)) continue;
      row.remove();
      this.rows.delete(runId);
    }
    // Rows already in place stay put, so keyboard focus on one survives a refresh.
    runs.forEach((run, i) => {
      const row = this.rows.get(run.run_id) ?? this.newRow(run.run_id);
      fillRow(row, run);
      if (this.tbody.children[i] !== row) this.tbody.insertBefore(row, this.tbody.children[i] ?? null);
    });
  }

  newRow(runId) {
    const row = fromTemplate("run-row");
    part(row, "link").href = `/runs/${encodeURIComponent(runId)}`;
    // The whole row is a target for the mouse; the link is the target for keyboards.
    row.addEventListener("click", (event) => {
      if (!event.target.closest("a") && !getSelection().toString()) part(row, "link").click();
    });
    this.rows.set(runId, row);
    return row;
  }
}

function fillRow(row, run) {
  row.className = `run-row status-${run.status}`;
  setBadge(part(row, "status"), run.status);
  setText(part(row, "link"), repoName(run.repo_url));
  part(row, "link").title = run.repo_url;
  setText(part(row, "run-id"), run.run_id.slice(0, 12));
  setText(part(row, "command"), run.test_command);
  setText(part(row, "counts"), countsText(run.counts) || "—");
  setText(part(row, "who"), run.user_id);
  part(row, "when").replaceChildren(timeElement(run.created_at));
}
