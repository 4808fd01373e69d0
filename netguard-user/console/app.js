// The console's shell: login, the view router (#view?filters, so filters live in the URL), the
// session and the live connection's indicator.
import { api, get, onLoggedOut } from "./api.js";
import { clear } from "./dom.js";
import * as live from "./live.js";

const views = {
  live: () => Promise.resolve(live),
  overview: () => import("./overview.js"),
  lists: () => import("./lists.js"),
  vms: () => import("./vms.js"),
  map: () => import("./map.js"),
};

const $ = (id) => document.getElementById(id);
export const session = { name: "", role: "", can_write: false, geoip: false };
let current = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, "");
  const [name, query] = raw.split("?", 2);
  return { name: views[name] ? name : "live", params: new URLSearchParams(query || "") };
}

/** Replaces the current view's URL parameters (filters), keeping the view. */
export function setParams(params) {
  const { name } = parseHash();
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  location.hash = s ? `${name}?${s}` : name;
}

async function route() {
  if (!session.name) return;
  const { name, params } = parseHash();
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = $("view");
  if (current && current.name === name && current.mod.update) {
    current.mod.update(params);
    return;
  }
  if (current?.mod.unmount) current.mod.unmount();
  current = null;
  clear(root);
  const mod = await views[name]();
  current = { name, mod };
  root.dataset.view = name;
  mod.mount(root, params);
}

function showLogin(message) {
  session.name = "";
  live.stop();
  if (current?.mod.unmount) current.mod.unmount();
  current = null;
  clear($("view"));
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("conn").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function loggedIn(s) {
  Object.assign(session, s);
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  $("conn").hidden = false;
  $("who").textContent = `${s.name} (${s.role}${s.can_write ? "" : ", read-only"})`;
  live.start((state) => {
    const c = $("conn");
    c.textContent = state;
    c.dataset.state = state;
  });
  route();
}

async function init() {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    input.value = "";
    try {
      loggedIn(await api("POST", "/api/v1/session", { token }));
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  });
  $("logout").addEventListener("click", async () => {
    try {
      await api("DELETE", "/api/v1/session");
    } finally {
      showLogin("Logged out.");
    }
  });
  onLoggedOut(() => showLogin("Your session ended; log in again."));
  window.addEventListener("hashchange", route);
  try {
    const s = await get("/api/v1/session");
    if (s.logged_in) loggedIn(s);
    else showLogin(s.reason === "not logged in" ? "" : s.reason);
  } catch (e) {
    showLogin(e.message);
  }
}

init();
document.documentElement.dataset.ready = "1";
