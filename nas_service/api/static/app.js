// The dashboard's entry point: a hash router over the search list and the search pages.
//   #/                          the searches and the start form
//   #/searches/3                one search
//   #/searches/3/episodes/17    the same, with episode 17 open

import { isAbort } from "./api.js";
import { el } from "./format.js";
import { ListPage } from "./list.js";
import { SearchPage } from "./search.js";

const view = document.getElementById("view");
let page = null;

function parse(hash) {
  const match = hash.match(/^#\/searches\/(\d+)(?:\/episodes\/(\d+))?\/?$/);
  if (match) return { name: "search", id: Number(match[1]), episode: match[2] == null ? null : Number(match[2]) };
  if (hash === "" || hash === "#" || hash === "#/") return { name: "list" };
  return { name: "missing" };
}

function route() {
  const target = parse(location.hash);
  if (target.name === "search" && page instanceof SearchPage && page.id === target.id) {
    page.showEpisode(target.episode);  // same search: only the episode view changes
    return;
  }
  if (page) page.dispose();
  page = null;
  if (target.name === "missing") {
    view.replaceChildren(el("h1", {}, "Not found"), el("p", {}, el("a", { href: "#/" }, "Back to the searches")));
    return;
  }
  const current = target.name === "list" ? new ListPage(view) : new SearchPage(view, target.id);
  page = current;
  current
    .start()
    .then(() => target.episode != null && current === page && current.showEpisode(target.episode))
    .catch((error) => current === page && !isAbort(error) && showProblem(error));
}

/** The page could not load (e.g. no such search): say so instead of a half-drawn page. */
function showProblem(error) {
  page.dispose();
  page = null;
  view.replaceChildren(
    el("h1", {}, error.status === 404 ? "Not found" : "Could not load this page"),
    el("p", { class: "message error", role: "alert" }, error.message),
    el("p", {}, el("a", { href: "#/" }, "Back to the searches")),
  );
}

window.addEventListener("hashchange", route);
route();
