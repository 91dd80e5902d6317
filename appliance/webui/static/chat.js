// The Chat page: streamed answers (SSE over fetch), Stop, regenerate, edit, citations, copy.
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
  const start = document.getElementById("start");
  const input = document.getElementById("message");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const regenerate = document.getElementById("regenerate");
  const errorBox = document.getElementById("chat-error");
  let controller = null;
  const PENDING = "appliance-pending-";

  function csrf() {
    const prefix = csrfName + "=";
    for (const part of document.cookie.split("; ")) {
      if (part.startsWith(prefix)) return decodeURIComponent(part.slice(prefix.length));
    }
    return "";
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      headers: { "X-CSRFToken": csrf(), Accept: "application/json", "Content-Type": "application/json" },
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
  }

  // -- rendering (mirrors chat.html's render_message) ---------------------------------
  function userNode(m) {
    const article = el("article", undefined, "msg msg-user");
    article.dataset.id = m.id;
    article.dataset.role = "user";
    article.append(el("div", m.content, "msg-body user-text"));
    const actions = el("div", undefined, "msg-actions");
    const edit = el("button", "Edit", "link");
    edit.type = "button";
    edit.dataset.edit = m.id;
    actions.append(edit);
    article.append(actions);
    return article;
  }

  function assistantNode(m) {
    const article = el("article", undefined, "msg msg-assistant");
    article.dataset.id = m.id;
    article.dataset.role = "assistant";
    const body = el("div", undefined, "msg-body answer");
    body.innerHTML = m.html; // sanitized on the server: no raw HTML, no remote images
    article.append(body);
    if (m.sources && m.sources.length) {
      const cited = m.sources.filter((s) => s.cited).length;
      const details = el("details", undefined, "sources");
      details.open = cited > 0;
      details.append(el("summary", "Sources (" + cited + " cited of " + m.sources.length + " retrieved)"));
      const list = el("ol");
      for (const s of m.sources) {
        const item = el("li", undefined, s.cited ? "cited" : "");
        item.id = m.id + "-src-" + s.number;
        item.value = s.number;
        const where = el("span", undefined, "src-where");
        const link = el("a", s.filename);
        link.href = "/knowledge";
        where.append(link);
        where.append(document.createTextNode((s.page ? ", page " + s.page : "") + (s.heading ? ", " + s.heading : "")));
        item.append(where);
        item.append(s.text ? el("blockquote", s.text, "src-text") : el("p", "This passage is no longer in the knowledge base.", "muted"));
        list.append(item);
      }
      details.append(list);
      article.append(details);
    }
    let meta = "";
    if (m.finish_reason === "cancelled") meta = "Stopped · ";
    else if (m.finish_reason === "length") meta = "Cut off at the length limit · ";
    meta += m.usage.prompt_tokens + " prompt + " + m.usage.completion_tokens + " answer tokens";
    article.append(el("p", meta, "msg-meta muted"));
    return article;
  }

  function render(data) {
    messages.replaceChildren(...data.messages.map((m) => (m.role === "user" ? userNode(m) : assistantNode(m))));
    const title = document.getElementById("chat-title");
    if (title) title.textContent = data.title;
    const listed = document.querySelector('.conv-list a[aria-current="page"]');
    if (listed) listed.textContent = data.title;
    else if (data.messages.length) {
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
    const last = data.messages[data.messages.length - 1];
    if (regenerate) {
      regenerate.parentElement.hidden = !last;
      regenerate.textContent = last && last.role === "user" ? "Answer again" : "Regenerate answer";
    }
  }

  async function refresh() {
    render(await api("GET", "/api/conversations/" + conversation));
  }

  // -- streaming ------------------------------------------------------------------------
  function busy(on) {
    if (sendButton) sendButton.disabled = on;
    if (stopButton) stopButton.hidden = !on;
    if (regenerate) regenerate.disabled = on;
    root.classList.toggle("streaming", on);
  }

  async function stream(url, body) {
    showError("");
    busy(true);
    controller = new AbortController();
    const pending = el("article", undefined, "msg msg-assistant pending");
    const text = el("div", undefined, "msg-body answer streaming-text");
    pending.append(text);
    let placed = false;
    function place() {
      if (!placed) { messages.append(pending); placed = true; }
    }
    let finished = false;
    try {
      const response = await fetch(url, {
        method: "POST",
        headers: { "X-CSRFToken": csrf(), "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        credentials: "same-origin",
        signal: controller.signal,
      });
      if (!response.ok) {
        let message = "Request failed (" + response.status + ")";
        try { const data = await response.json(); message = data.error.message; } catch (_) { /* not JSON */ }
        const error = new Error(message);
        error.status = response.status;
        throw error;
      }
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
          if (event.type === "user") {
            messages.append(userNode(event.message));
            place();
          } else if (event.type === "delta") {
            place();
            text.textContent += event.text;
          } else if (event.type === "done") {
            finished = true;
            if (event.message) pending.replaceWith(assistantNode(event.message));
            else pending.remove();
          } else if (event.type === "error") {
            finished = true;
            pending.remove();
            showError(event.message);
          }
        }
      }
    } catch (err) {
      if (err.name !== "AbortError") showError(err.message, err.status === 402);
    } finally {
      controller = null;
      busy(false);
    }
    if (!finished) {
      // Stopped: the server keeps what was written; show the stored state.
      await new Promise((resolve) => setTimeout(resolve, 400));
    }
    try { await refresh(); } catch (err) { showError(err.message); }
  }

  function send(content) {
    return stream("/api/conversations/" + conversation + "/messages", { content });
  }

  if (composer && conversation) {
    composer.addEventListener("submit", (event) => {
      event.preventDefault();
      const content = input.value.trim();
      if (!content || controller) return;
      input.value = "";
      send(content);
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        composer.requestSubmit();
      }
    });
    const pendingKey = PENDING + conversation;
    const waiting = sessionStorage.getItem(pendingKey);
    if (waiting) {
      sessionStorage.removeItem(pendingKey);
      send(waiting);
    }
  }

  if (start) {
    start.addEventListener("submit", async (event) => {
      event.preventDefault();
      const content = input.value.trim();
      if (!content) return;
      sendButton.disabled = true;
      try {
        const created = await api("POST", "/api/conversations", { instance_id: start.elements.instance_id.value });
        sessionStorage.setItem(PENDING + created.id, content);
        window.location.assign("/chat/" + created.id);
      } catch (err) {
        sendButton.disabled = false;
        alert(err.message);
      }
    });
  }

  if (stopButton) {
    stopButton.addEventListener("click", () => { if (controller) controller.abort(); });
  }

  if (regenerate) {
    regenerate.addEventListener("click", () => {
      if (controller) return;
      const last = messages.lastElementChild;
      if (last && last.dataset.role === "assistant") last.remove();
      stream("/api/conversations/" + conversation + "/regenerate", {});
    });
  }

  // -- edit an earlier question, copy code, open a cited source, confirm deletes --------
  document.addEventListener("click", async (event) => {
    const target = event.target;
    if (!(target instanceof Element)) return;
    const edit = target.closest("[data-edit]");
    if (edit && !controller) {
      const article = edit.closest("article");
      const body = article.querySelector(".user-text");
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
      cancel.addEventListener("click", () => { form.replaceWith(body); edit.hidden = false; });
      form.addEventListener("submit", (submitEvent) => {
        submitEvent.preventDefault();
        const content = area.value.trim();
        if (!content) return;
        while (article.nextElementSibling) article.nextElementSibling.remove();
        article.remove();
        stream("/api/conversations/" + conversation + "/messages/" + article.dataset.id + "/edit", { content });
      });
      return;
    }
    const copy = target.closest("[data-copy]");
    if (copy) {
      const code = copy.parentElement.querySelector("code");
      const value = code ? code.textContent : "";
      try {
        await navigator.clipboard.writeText(value);
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(code);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        document.execCommand("copy");
      }
      copy.textContent = "Copied";
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
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
  });

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });
})();
