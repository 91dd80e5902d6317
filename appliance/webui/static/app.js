// Small behaviour shared by every page: the phone menu, side drawers, copy buttons and
// pages that follow a background job. Loaded in <head>; without JavaScript the menu and
// drawers stay open (the "js" class is what hides them on small screens).
"use strict";
document.documentElement.classList.add("js");

function toggle(button, target, open) {
  const next = open === undefined ? button.getAttribute("aria-expanded") !== "true" : open;
  button.setAttribute("aria-expanded", String(next));
  target.classList.toggle("open", next);
}

function setUpMenu() {
  const button = document.querySelector(".menu-toggle");
  const menu = document.getElementById("menu");
  if (!button || !menu) return;
  button.addEventListener("click", () => toggle(button, menu));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && menu.classList.contains("open")) {
      toggle(button, menu, false);
      button.focus();
    }
  });
}

// A side panel (the chat's conversation list) becomes a drawer on small screens: it slides
// over the page from the left, opened by its toggle button (the page's own, the one whose
// aria-controls names it, else one placed before it), closed by that button, Escape or a
// click outside it.
function setUpDrawers() {
  document.querySelectorAll("[data-drawer], .chat-side").forEach((panel, index) => {
    if (!panel.id) panel.id = "drawer-" + index;
    let button = document.querySelector(`[aria-controls="${panel.id}"]`);
    if (!button) {
      button = document.createElement("button");
      button.type = "button";
      button.className = "drawer-toggle";
      button.textContent = panel.dataset.drawer || "Conversations";
      button.setAttribute("aria-expanded", "false");
      button.setAttribute("aria-controls", panel.id);
      button.addEventListener("click", () => toggle(button, panel));
      panel.parentElement.insertBefore(button, panel);
    }
    document.addEventListener("click", (event) => {
      const open = panel.classList.contains("open");
      if (open && !panel.contains(event.target) && !button.contains(event.target)) {
        toggle(button, panel, false);
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && panel.classList.contains("open")) {
        toggle(button, panel, false);
        button.focus();
      }
    });
  });
}

// On phones a table shows one card per row (app.css): each cell is labelled with its
// column's heading.
function labelTableCells() {
  document.querySelectorAll("table").forEach((table) => {
    const headings = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
    if (!headings.length) return;
    table.querySelectorAll("tbody tr").forEach((row) => {
      [...row.children].forEach((cell, index) => {
        if (headings[index] && !cell.dataset.label) cell.dataset.label = headings[index];
      });
    });
  });
}

// <button data-copy="element-id">: copies that element's text.
function setUpCopy() {
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const label = button.textContent;
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        button.textContent = "Copied";
      } catch (error) {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
      setTimeout(() => { button.textContent = label; }, 2000);
    });
  });
}

// <p data-poll-export>: while an export is being built, show its progress and load the
// page again (a GET) once it is ready or failed.
function setUpExportPoll() {
  const status = document.querySelector("[data-poll-export]");
  if (!status || !["queued", "building"].includes(status.dataset.status)) return;
  const text = status.querySelector(".progress-text");
  const poll = async () => {
    try {
      const response = await fetch("/api/me/export", { credentials: "same-origin" });
      if (response.ok) {
        const job = await response.json();
        if (job.status !== "building" && job.status !== "queued") {
          window.location.reload();
          return;
        }
        if (text) text.textContent = `Building: ${job.progress} of ${job.total || "?"} parts done…`;
      }
    } catch (error) {
      // The server is restarting or the network dropped: try again at the next tick.
    }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 500);
}

// -- for the page scripts (chat.js, knowledge.js); the CSRF cookie's name is on their root
// element (data-csrf-cookie).

function csrfToken(cookieName) {
  const prefix = cookieName + "=";
  for (const part of document.cookie.split("; ")) {
    if (part.startsWith(prefix)) return decodeURIComponent(part.slice(prefix.length));
  }
  return "";
}

// An element with text (inserted as text, never as HTML) and a class.
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

// A JSON API call (``body``: an object, or none); throws the API's error message.
async function apiCall(cookieName, method, url, body) {
  const headers = { "X-CSRFToken": csrfToken(cookieName), Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let data = null;
  try { data = await response.json(); } catch (_) { /* empty body */ }
  if (!response.ok) {
    throw new Error(data && data.error ? data.error.message : "Request failed (" + response.status + ")");
  }
  return data;
}

document.addEventListener("DOMContentLoaded", () => {
  setUpMenu();
  setUpDrawers();
  labelTableCells();
  setUpCopy();
  setUpExportPoll();
});
