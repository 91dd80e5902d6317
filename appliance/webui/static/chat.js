// The Chat page: streamed answers (SSE over fetch), Stop, regenerate, edit, versions,
// citations, copy, a token counter, and retrying by itself while the model is busy.
// No framework and no build step. Text from the model is inserted as text while it streams;
// the finished answer is the server's sanitized HTML (appliance/chat/render.py).
(function () {
  "use strict";
  const root = document.getElementById("chat");
  if (!root) return;
  const csrfName = root.dataset.csrfCookie;
  let conversation = root.dataset.conversation;
  const messages = document.getElementById("messages");
  const composer = document.getElementById("composer");
  const input = document.getElementById("message");
  const picker = document.getElementById("instance");
  const counter = document.getElementById("counter");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const regenerate = document.getElementById("regenerate");
  const errorBox = document.getElementById("chat-error");
  const retryBox = document.getElementById("chat-retry");
  let controller = null;
  let retryTimer = null;
  const MAX_RETRIES = 2;
  const LAST_INSTANCE = "appliance-chat-instance";
  // Per tab and per conversation ("new" before it exists): the unsent text and the last
  // error, so that a reload shows both (a refused message is never stored).
  const key = (what) => "appliance-chat-" + what + "-" + (conversation || "new");

  const csrf = () => csrfToken(csrfName);
  const api = (method, url, body) => apiCall(csrfName, method, url, body);
  const number = (n) => Number(n).toLocaleString("en");

  function showError(message, outOfCredit) {
    if (!errorBox) return;
    errorBox.textContent = message || "";
    if (outOfCredit) {
      // 402: out of credit, or a spend cap reached. The question is kept: top up, then
      // "Answer again".
      const link = el("a", "Top up credit", "button primary");
      link.href = "/billing#top-up";
      errorBox.append(" ", link);
    }
    errorBox.hidden = !message;
    if (message) sessionStorage.setItem(key("error"), message);
    else sessionStorage.removeItem(key("error"));
  }

  // -- scrolling: open at the latest message, follow the stream --------------------------
  function nearBottom() {
    const page = document.documentElement;
    return page.scrollHeight - (window.scrollY + window.innerHeight) < 160;
  }
  function toBottom() { window.scrollTo(0, document.documentElement.scrollHeight); }

  // -- rendering: the server draws every message (templates/chat/messages.html) ------
  function fragment(html) {
    const holder = document.createElement("template");
    holder.innerHTML = html; // the server's: escaped text, sanitized answers
    return holder.content;
  }

  // A message's disclosure (its sources) that the reader opened stays open when the
  // messages are drawn again, as they are once an answer is stored.
  function disclosures() {
    return [...messages.querySelectorAll("article[data-id] details")].map((details) => ({
      details, name: details.closest("article").dataset.id + " " + details.className,
    }));
  }

  function render(data) {
    const follow = nearBottom();
    const opened = disclosures().filter((d) => d.details.open).map((d) => d.name);
    messages.replaceChildren(fragment(data.html));
    for (const { details, name } of disclosures()) if (opened.includes(name)) details.open = true;
    const title = document.getElementById("chat-title");
    if (title) title.textContent = data.title;
    const listed = document.querySelector('.conv-list a[aria-current="page"]');
    if (listed) listed.textContent = data.title;
    else if (messages.children.length) {
      // A conversation started on this page: add it to the list.
      const list = document.querySelector(".conv-list");
      const link = el("a", data.title);
      link.href = "/chat/" + data.id;
      link.setAttribute("aria-current", "page");
      const item = el("li");
      item.append(link);
      const empty = list && list.querySelector("li.muted");
      if (empty) empty.remove();
      if (list) list.prepend(item);
    }
    const last = messages.lastElementChild;
    if (regenerate) {
      regenerate.parentElement.hidden = !last;
      regenerate.textContent = last && last.dataset.role === "user" ? "Answer again" : "Regenerate answer";
    }
    if (follow) toBottom();
  }

  async function refresh() {
    render(await api("GET", "/chat/" + conversation + "/messages"));
  }

  // -- streaming ------------------------------------------------------------------------
  function busy(on) {
    if (sendButton) sendButton.disabled = on;
    if (stopButton) stopButton.hidden = !on;
    if (regenerate) regenerate.disabled = on;
    root.classList.toggle("streaming", on);
  }

  function knowledgeOn() {
    if (!conversation && picker) {
      const chosen = picker.selectedOptions[0];
      return Boolean(chosen && chosen.dataset.knowledge === "1");
    }
    return root.dataset.knowledge === "1";
  }

  // How long the server asks us to wait (429/503), from its JSON or its Retry-After.
  function retryAfter(response, data) {
    const fromBody = data && (data.retry_after || (data.error && data.error.retry_after));
    const seconds = Number(fromBody || response.headers.get("Retry-After"));
    return seconds > 0 ? Math.min(seconds, 60) : 0;
  }

  // "Busy, retrying in N s": counts down, then resolves true (false when Stop is pressed).
  function countdown(seconds, reason) {
    return new Promise((resolve) => {
      let left = seconds;
      let timer = null;
      busy(true);
      const end = (go) => {
        clearTimeout(timer);
        retryTimer = null;
        retryBox.hidden = true;
        busy(false);
        resolve(go);
      };
      retryTimer = { cancel: () => end(false) };
      const tick = () => {
        if (left <= 0) { end(true); return; }
        retryBox.textContent = (reason ? reason + " " : "") + "Busy, retrying in " + left + " s.";
        retryBox.hidden = false;
        left -= 1;
        timer = setTimeout(tick, 1000);
      };
      tick();
    });
  }

  // The page's own route answers the API's events with each stored message drawn:
  // {content} asks, {content, edit} asks a new version of a question, {} answers again.
  async function stream(body, attempt) {
    attempt = attempt || 0;
    showError("");
    busy(true);
    controller = new AbortController();
    const pending = el("article", undefined, "msg msg-assistant pending");
    const status = el("p", knowledgeOn() ? "Searching your documents…" : "Sending your question…", "msg-status");
    const text = el("div", undefined, "msg-body answer streaming-text");
    pending.append(status, text);
    messages.append(pending);
    toBottom();
    let finished = false;
    let retry = null;
    try {
      const response = await fetch("/chat/" + conversation + "/ask", {
        method: "POST",
        headers: { "X-CSRFToken": csrf(), "Content-Type": "application/json", Accept: "text/event-stream, application/json" },
        body: JSON.stringify(body),
        credentials: "same-origin",
        signal: controller.signal,
      });
      if (!response.ok) {
        let data = null;
        try { data = await response.json(); } catch (_) { /* not JSON */ }
        const message = (data && (data.message || (data.error && data.error.message))) || "Request failed (" + response.status + ")";
        const seconds = retryAfter(response, data);
        if ((response.status === 429 || response.status === 503) && seconds) {
          retry = { seconds, message };
        } else {
          const error = new Error(message);
          error.status = response.status;
          throw error;
        }
      } else {
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const line = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            if (!line.startsWith("data: ")) continue;
            const event = JSON.parse(line.slice(6));
            const follow = nearBottom();
            if (event.type === "user") {
              // The question is stored: the draft is no longer needed.
              sessionStorage.removeItem(key("draft"));
              if (input.value.trim() === event.message.content) input.value = "";
              updateCounter();
              messages.insertBefore(fragment(event.article), pending);
            } else if (event.type === "status") {
              status.textContent = event.text;
            } else if (event.type === "delta") {
              status.remove();
              text.textContent += event.text;
            } else if (event.type === "done") {
              finished = true;
              if (event.article) pending.replaceWith(fragment(event.article));
              else pending.remove();
            } else if (event.type === "error") {
              finished = true;
              pending.remove();
              // 429 (this account has too many requests waiting) clears in moments.
              const seconds = event.retry_after || (event.status === 429 ? 2 : 0);
              if (seconds) retry = { seconds: Math.min(seconds, 60), message: event.message };
              else showError(event.message, event.status === 402);
            }
            if (follow) toBottom();
          }
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") showError(err.message, err.status === 402);
    } finally {
      controller = null;
      pending.remove();
      busy(false);
    }
    if (!finished && !retry) {
      // Stopped: the server keeps what was written; show the stored state.
      await new Promise((resolve) => setTimeout(resolve, 400));
    }
    if (conversation) {
      try { await refresh(); } catch (err) { showError(err.message); }
    }
    if (retry) {
      if (attempt >= MAX_RETRIES) {
        showError(retry.message);
      } else if (await countdown(retry.seconds, retry.message)) {
        // A question the server already stored is answered again, not asked twice.
        const last = messages.lastElementChild;
        await stream(last && last.dataset.role === "user" ? {} : body, attempt + 1);
        return;
      }
    }
    if (document.activeElement === document.body || document.activeElement === sendButton) input.focus();
  }

  async function send(content) {
    if (!conversation) {
      // A new chat starts by typing: create it on the chosen instance, then ask.
      let created;
      try {
        // With the first message, so that one too long to send creates nothing.
        created = await api("POST", "/api/conversations", { instance_id: picker.value, content });
      } catch (err) {
        showError(err.message);
        return;
      }
      const draft = sessionStorage.getItem(key("draft"));
      sessionStorage.removeItem(key("draft"));
      root.dataset.knowledge = knowledgeOn() ? "1" : "0";
      conversation = created.id;
      root.dataset.conversation = created.id;
      root.dataset.instance = picker.value;
      if (draft) sessionStorage.setItem(key("draft"), draft);
      history.replaceState(null, "", "/chat/" + created.id);
      composer.action = "/chat/" + created.id + "/send";
      picker.hidden = true; // the conversation stays on this instance
      document.getElementById("chat-instance").textContent = picker.selectedOptions[0].textContent;
      const tools = document.querySelector(".chat-tools");
      for (const form of tools.querySelectorAll("form[data-path]")) {
        form.action = "/chat/" + created.id + "/" + form.dataset.path;
      }
      tools.hidden = false;
      const hint = document.querySelector(".chat-hint");
      if (hint) hint.hidden = true;
    }
    return stream({ content });
  }

  // -- the counter: characters now, tokens against the instance's budget shortly after --
  let measureTimer = null;
  let measured = 0;
  function instanceId() { return conversation ? root.dataset.instance : picker.value; }
  function updateCounter() {
    if (!counter) return;
    const value = input.value;
    clearTimeout(measureTimer);
    counter.classList.remove("over");
    counter.title = "";
    if (!value.trim()) { counter.textContent = ""; return; }
    const chars = number(value.length) + " characters";
    counter.textContent = chars;
    const seq = ++measured;
    measureTimer = setTimeout(async () => {
      let room;
      try {
        room = await api("POST", "/api/conversations/measure", { instance_id: instanceId(), content: value });
      } catch (_) { return; } // the counter stays at characters
      if (seq !== measured) return;
      const why = "Room for one message: the instance's context budget of " + number(room.context_budget) +
        " tokens (as on the Instances page), less " + number(room.answer_reserve) +
        " kept for the answer and " + number(room.system_tokens) + " for its instructions.";
      counter.title = why;
      counter.textContent = chars + " · " + number(room.tokens) + " of " + number(room.limit) + " tokens";
      if (!room.fits) {
        counter.classList.add("over");
        counter.textContent += ": too long to send. " + why;
      }
    }, 350);
  }

  if (composer) {
    composer.addEventListener("submit", (event) => {
      event.preventDefault();
      const content = input.value.trim();
      if (!content || controller || retryTimer) return;
      send(content);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        composer.requestSubmit();
      }
    });
    input.addEventListener("input", () => {
      if (input.value) sessionStorage.setItem(key("draft"), input.value);
      else sessionStorage.removeItem(key("draft"));
      updateCounter();
    });
    if (picker) {
      const remembered = localStorage.getItem(LAST_INSTANCE);
      if (remembered && [...picker.options].some((o) => o.value === remembered)) picker.value = remembered;
      picker.addEventListener("change", () => {
        localStorage.setItem(LAST_INSTANCE, picker.value);
        updateCounter();
      });
    }
    // What was typed (or refused) before a reload is still there.
    const draft = sessionStorage.getItem(key("draft"));
    if (draft && !input.value) input.value = draft;
    const error = sessionStorage.getItem(key("error"));
    if (error) showError(error);
    updateCounter();
    input.focus();
  }
  toBottom();

  if (stopButton) {
    stopButton.addEventListener("click", () => {
      if (controller) controller.abort();
      else if (retryTimer) retryTimer.cancel();
    });
  }

  if (regenerate) {
    regenerate.addEventListener("click", () => {
      if (controller || retryTimer || !conversation) return;
      const last = messages.lastElementChild;
      if (last && last.dataset.role === "assistant") last.remove();
      stream({});
    });
  }

  async function copyText(value, node) {
    try {
      await navigator.clipboard.writeText(value);
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents(node);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      document.execCommand("copy");
    }
  }

  function copied(button, label) {
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = label; }, 1500);
  }

  // -- edit, versions, copy, cited sources, confirm deletes -----------------------------
  document.addEventListener("click", async (event) => {
    const target = event.target;
    if (!(target instanceof Element)) return;
    const edit = target.closest("[data-edit]");
    if (edit && !controller && !retryTimer) {
      const node = edit.closest("article");
      const body = node.querySelector(".user-text");
      const form = el("form", undefined, "edit-form");
      const area = el("textarea");
      area.value = body.textContent;
      area.rows = 3;
      area.setAttribute("aria-label", "Edit message");
      const save = el("button", "Save and ask again", "primary");
      save.type = "submit";
      const cancel = el("button", "Cancel");
      cancel.type = "button";
      const row = el("div", undefined, "row");
      row.append(save, cancel);
      form.append(area, row);
      body.replaceWith(form);
      edit.hidden = true;
      area.focus();
      area.addEventListener("keydown", (keyEvent) => {
        if (keyEvent.key === "Enter" && !keyEvent.shiftKey && !keyEvent.isComposing) {
          keyEvent.preventDefault();
          form.requestSubmit();
        }
      });
      cancel.addEventListener("click", () => { form.replaceWith(body); edit.hidden = false; });
      form.addEventListener("submit", (submitEvent) => {
        submitEvent.preventDefault();
        const content = area.value.trim();
        if (!content) return;
        // The new version replaces this question and what followed it on the page; the
        // old ones stay, one click away (‹ 1/2 ›).
        while (node.nextElementSibling) node.nextElementSibling.remove();
        node.remove();
        stream({ content, edit: node.dataset.id });
      });
      return;
    }
    const select = target.closest("[data-select]");
    if (select && select.dataset.select && !controller && !retryTimer) {
      try {
        await api("POST", "/api/conversations/" + conversation + "/messages/" + select.dataset.select + "/select");
        await refresh();
      } catch (err) {
        showError(err.message);
      }
      return;
    }
    const copyMessage = target.closest("[data-copy-message]");
    if (copyMessage) {
      const node = copyMessage.closest("article");
      await copyText(node.dataset.raw, node.querySelector(".msg-body"));
      copied(copyMessage, "Copy");
      return;
    }
    const copy = target.closest("[data-copy]");
    if (copy) {
      const code = copy.parentElement.querySelector("code");
      await copyText(code ? code.textContent : "", code);
      copied(copy, "Copy");
      return;
    }
    const cite = target.closest("a.cite");
    if (cite) {
      const source = document.getElementById(cite.getAttribute("href").slice(1));
      if (source) {
        event.preventDefault();
        source.closest("details").open = true;
        source.scrollIntoView({ block: "nearest", behavior: "smooth" });
        source.classList.add("flash-source");
        setTimeout(() => source.classList.remove("flash-source"), 1500);
      }
    }
    const toggle = target.closest(".conv-toggle");
    if (toggle) {
      const side = document.getElementById(toggle.getAttribute("aria-controls"));
      const open = !side.classList.contains("open");
      side.classList.toggle("open", open);
      toggle.setAttribute("aria-expanded", String(open));
    }
  });

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
})();
