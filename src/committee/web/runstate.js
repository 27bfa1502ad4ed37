// A run as the page knows it, built from the REST snapshot and the event stream in any order:
// statuses only move forward, so a late snapshot cannot undo newer events, and replayed
// events cannot undo a newer snapshot.

import { FINAL } from "./ui.js";

const rank = (status) => (FINAL.has(status) ? 2 : status === "running" ? 1 : 0);
const forward = (old, next) => (old && rank(old) > rank(next) ? old : next);

export class RunState {
  constructor(runId) {
    this.runId = runId;
    this.run = null; // status, repo_url, test_command, project_type, user_id, created_at, ...
    this.commits = []; // by index: {sha, ref, subject, status, result, startedAt}
  }

  get final() {
    return FINAL.has(this.run?.status);
  }

  get firstBad() {
    return this.run?.first_bad_commit ?? null;
  }

  commitBySha(sha) {
    return this.commits.find((c) => c.sha === sha || c.ref === sha) ?? null;
  }

  setRun(fields) {
    const status = forward(this.run?.status, fields.status ?? "queued");
    this.run = { ...this.run, ...fields, status };
  }

  setCommit(index, fields) {
    const old = this.commits[index] ?? { status: "queued", result: null, startedAt: null };
    const status = forward(old.status, fields.status ?? old.status);
    const kept = status === old.status && fields.status !== status;
    // A result belongs with a final status; an older snapshot's result never replaces it.
    this.commits[index] = kept ? { ...fields, ...old } : { ...old, ...fields, status };
  }

  setResults(results) {
    results.forEach((result, index) =>
      this.setCommit(index, {
        sha: result.commit,
        ref: result.ref,
        subject: result.subject,
        status: result.status,
        result: FINAL.has(result.status) ? result : null,
      }),
    );
  }

  applySummary(summary) {
    const { results, counts, ...fields } = summary;
    this.setRun(fields);
    this.setResults(results);
  }

  // Applies one run event; returns what it changed: "log", "commits" or "run".
  apply(event) {
    switch (event.type) {
      case "run.accepted": {
        const { type, seq, ts, commits, protocol, run_id, ...fields } = event;
        this.setRun({ created_at: ts, ...this.run, ...fields, status: this.run?.status ?? "queued" });
        commits.forEach((c, i) => this.setCommit(i, { sha: c.sha, ref: c.ref, subject: c.subject }));
        return "run";
      }
      case "commit.queued":
        this.setCommit(event.index, { sha: event.commit, ref: event.ref, status: "queued" });
        return "commits";
      case "commit.started":
        this.setRun({ status: "running" });
        this.setCommit(event.index, {
          sha: event.commit,
          ref: event.ref,
          status: "running",
          startedAt: event.ts,
        });
        return "commits";
      case "commit.finished": {
        const { type, seq, ts, index, run_id, ...result } = event;
        this.setCommit(index, {
          sha: result.commit,
          ref: result.ref,
          subject: result.subject,
          status: result.status,
          result,
        });
        return "commits";
      }
      case "run.finished":
        this.setRun({
          status: event.status,
          finished_at: event.ts,
          first_bad_commit: event.first_bad_commit,
          newly_failing: event.newly_failing,
        });
        this.setResults(event.results);
        return "run";
      default:
        return "log";
    }
  }
}
