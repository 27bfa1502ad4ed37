// Start-up, sign-in and routing: "/" lists runs, "/runs/<id>" watches one.

import { onTokenRequired, takeTokenFromUrl, token } from "./api.js";
import { Live } from "./live.js";
import { runPage } from "./run.js";
import { runsPage } from "./runs.js";
import { setText } from "./ui.js";

const main = document.getElementById("main");
const CONNECTION_TEXT = {
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  "signed-out": "Signed out",
  idle: "",
};

const live = new Live((state) => {
  const node = document.getElementById("connection");
  node.dataset.state = state;
  setText(node, CONNECTION_TEXT[state]);
});

let page = null;

function route() {
  page?.leave();
  main.replaceChildren();
  document.title = "committee";
  const match = location.pathname.match(/^\/runs\/([^/]+)\/?$/);
  if (match) page = runPage(main, decodeURIComponent(match[1]), { live });
  else page = runsPage(main, { navigate });
  document.getElementById("sign-out").hidden = !token.get();
}

function navigate(path) {
  history.pushState(null, "", path);
  route();
  main.focus(); // where a screen reader starts reading the new page
}

function isPage(url) {
  return url.origin === location.origin && !/^\/(api|static)\//.test(url.pathname);
}

// Same-origin links to our own pages switch views without reloading.
function followLinks(event) {
  const link = event.target.closest("a[href]");
  if (!link || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey || link.target) return;
  const url = new URL(link.href);
  if (!isPage(url) || (url.pathname === location.pathname && url.hash)) return;
  event.preventDefault();
  navigate(url.pathname + url.search + url.hash);
}

// One sign-in at a time: every request waiting on a token resumes when it is given.
let waiting = null;
function askForToken(reason) {
  if (waiting) return waiting;
  const dialog = document.getElementById("sign-in");
  const form = dialog.querySelector("form");
  const problem = document.getElementById("sign-in-problem");
  problem.hidden = !reason;
  setText(problem, reason);
  form.reset();
  waiting = new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      token.set(form.elements.token.value.trim());
      dialog.close();
      waiting = null;
      document.getElementById("sign-out").hidden = false;
      resolve();
    };
  });
  dialog.showModal();
  return waiting;
}

function signOut() {
  token.clear();
  location.reload();
}

takeTokenFromUrl();
onTokenRequired(askForToken);
// The sign-in dialog cannot be dismissed: without a token there is nothing to show.
document.getElementById("sign-in").addEventListener("cancel", (event) => event.preventDefault());
document.getElementById("sign-out").addEventListener("click", signOut);
document.addEventListener("click", followLinks);
window.addEventListener("popstate", route);
route();
