// The Knowledge page: uploads with progress, live status, search and removal.
// No framework and no build step; everything the server sends is inserted as text.
(function () {
  "use strict";
  const root = document.getElementById("kb");
  if (!root) return;
  const csrfName = root.dataset.csrfCookie;
  const maxBytes = Number(root.dataset.maxMb) * 1024 * 1024;

  function csrf() {
    const prefix = csrfName + "=";
    for (const part of document.cookie.split("; ")) {
      if (part.startsWith(prefix)) return decodeURIComponent(part.slice(prefix.length));
    }
    return "";
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      headers: { "X-CSRFToken": csrf(), Accept: "application/json" },
      body,
      credentials: "same-origin",
    });
    let data = null;
    try { data = await response.json(); } catch (_) { /* empty body */ }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : "Request failed (" + response.status + ")";
      throw new Error(message);
    }
    return data;
  }

  // -- uploads -------------------------------------------------------------------------
  const input = document.getElementById("upload-input");
  const form = document.getElementById("upload-form");
  const list = document.getElementById("uploads");

  function upload(file) {
    const item = el("li");
    const name = el("span", file.name, "upload-name");
    const bar = el("progress");
    bar.max = 100;
    bar.value = 0;
    const note = el("span", "", "muted");
    item.append(name, bar, note);
    list.prepend(item);
    if (file.size > maxBytes) {
      note.textContent = "too large";
      item.classList.add("failed");
      return;
    }
    const data = new FormData();
    data.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/documents");
    xhr.setRequestHeader("X-CSRFToken", csrf());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) bar.value = Math.round((event.loaded / event.total) * 100);
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status === 202) {
        bar.value = 100;
        note.textContent = body && body.duplicate ? "already in the knowledge base" : "uploaded";
        refresh();
      } else {
        item.classList.add("failed");
        note.textContent = body && body.error ? body.error.message : "upload failed (" + xhr.status + ")";
      }
    };
    xhr.onerror = () => { item.classList.add("failed"); note.textContent = "network error"; };
    xhr.send(data);
  }

  input.addEventListener("change", () => { for (const f of input.files) upload(f); input.value = ""; });
  form.addEventListener("submit", (event) => event.preventDefault());
  for (const type of ["dragenter", "dragover"]) {
    form.addEventListener(type, (event) => { event.preventDefault(); form.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    form.addEventListener(type, () => form.classList.remove("over"));
  }
  form.addEventListener("drop", (event) => {
    event.preventDefault();
    for (const f of event.dataTransfer.files) upload(f);
  });

  // -- the documents table, refreshed while something is in progress ------------------
  const tbody = document.querySelector("#documents tbody");
  const empty = document.getElementById("empty");
  let timer = null;

  function row(doc) {
    const tr = el("tr");
    tr.dataset.id = doc.id;
    const status = doc.status + (doc.error ? ": " + doc.error : "");
    tr.append(
      el("td", doc.filename),
      el("td", status, "status status-" + doc.status),
      el("td", doc.chunks_done + " / " + doc.chunks_total),
      el("td", doc.created_at.slice(0, 16).replace("T", " ")),
    );
    const cell = el("td");
    if (doc.status === "failed") {
      const retry = el("button", "Retry");
      retry.type = "button";
      retry.dataset.retry = doc.id;
      cell.append(retry);
    }
    const remove = el("button", "Remove", "danger");
    remove.type = "button";
    remove.dataset.delete = doc.id;
    cell.append(remove);
    tr.append(cell);
    return tr;
  }

  async function refresh() {
    clearTimeout(timer);
    const docs = await api("GET", "/api/documents");
    tbody.replaceChildren(...docs.map(row));
    empty.hidden = docs.length > 0;
    if (docs.some((d) => ["queued", "extracting", "embedding"].includes(d.status))) {
      timer = setTimeout(refresh, 1500);
    }
  }

  tbody.addEventListener("click", async (event) => {
    const target = event.target;
    try {
      if (target.dataset.delete) {
        const name = target.closest("tr").firstChild.textContent;
        if (!window.confirm("Remove " + name + " and everything indexed from it?")) return;
        await api("DELETE", "/api/documents/" + encodeURIComponent(target.dataset.delete));
        await refresh();
      } else if (target.dataset.retry) {
        await api("POST", "/api/documents/" + encodeURIComponent(target.dataset.retry) + "/retry");
        await refresh();
      }
    } catch (error) {
      window.alert(error.message);
    }
  });

  // -- search ----------------------------------------------------------------------------
  const searchForm = document.getElementById("search-form");
  const hits = document.getElementById("search-hits");
  const legs = document.getElementById("search-legs");
  searchForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const q = document.getElementById("search-q").value;
    hits.replaceChildren();
    try {
      const result = await api("GET", "/api/search?q=" + encodeURIComponent(q));
      legs.textContent = result.hits.length + " passages · searched with " + result.legs.join(" + ") +
        (result.vector_unavailable ? " (the model is not answering right now: words only, not meaning)" : "");
      for (const hit of result.hits) {
        const li = el("li");
        const where = hit.filename + (hit.page ? ", page " + hit.page : "") + (hit.heading ? " · " + hit.heading : "");
        li.append(el("div", where, "hit-source"), el("p", hit.text, "hit-text"));
        hits.append(li);
      }
    } catch (error) {
      legs.textContent = error.message;
    }
  });

  refresh();
})();
