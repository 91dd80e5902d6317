// The Knowledge page: uploads with progress, live status, search and removal.
// No framework and no build step; everything the server sends is inserted as text.
(function () {
  "use strict";
  const root = document.getElementById("kb");
  if (!root) return;
  const csrfName = root.dataset.csrfCookie;
  const maxBytes = Number(root.dataset.maxMb) * 1024 * 1024;

  const csrf = () => csrfToken(csrfName);
  const api = (method, url, body) => apiCall(csrfName, method, url, body);

  // -- uploads -------------------------------------------------------------------------
  const input = document.getElementById("upload-input");
  const form = document.getElementById("upload-form");
  const list = document.getElementById("uploads");
  const uploadCollection = document.getElementById("upload-collection");

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
    if (uploadCollection.value) data.append("collection", uploadCollection.value);
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

  // -- many files (a folder, a selection, a drop): one overall progress bar -------------
  // Files go up in requests of at most 20 (the server's limit per request); the bar
  // counts each document twice: once uploaded, once ready (indexed).
  const SUPPORTED = /\.(txt|md|markdown|html?|pdf|docx|csv|json|zip)$/i;
  const PER_REQUEST = 20;
  const bulk = document.getElementById("bulk");
  const bar = document.getElementById("bulk-bar");
  const bulkNote = document.getElementById("bulk-note");
  const refusedList = document.getElementById("bulk-refused");

  function refuse(name, why) {
    refusedList.append(el("li", name + ": " + why, "failed"));
  }

  function send(files) {
    return new Promise((resolve) => {
      const data = new FormData();
      for (const f of files) data.append("files", f, f.name);
      if (uploadCollection.value) data.append("collection", uploadCollection.value);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/documents");
      xhr.setRequestHeader("X-CSRFToken", csrf());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
        if (xhr.status === 202) {
          resolve(Array.isArray(body) ? body : [body]);
        } else {
          const why = body && body.error ? body.error.message : "upload failed (" + xhr.status + ")";
          for (const f of files) refuse(f.name, why);
          resolve([]);
        }
      };
      xhr.onerror = () => { for (const f of files) refuse(f.name, "network error"); resolve([]); };
      xhr.send(data);
    });
  }

  async function uploadMany(all) {
    const files = all.filter((f) => !f.name.startsWith("."));
    const wanted = files.filter((f) => SUPPORTED.test(f.name) && f.size <= maxBytes);
    bulk.hidden = false;
    refusedList.replaceChildren();
    for (const f of files) {
      if (!SUPPORTED.test(f.name)) refuse(f.name, "not a supported type");
      else if (f.size > maxBytes) refuse(f.name, "too large");
    }
    const ids = new Set();
    let sent = 0;
    let duplicates = 0;
    bar.max = Math.max(1, wanted.length * 2);
    bar.value = 0;
    for (let i = 0; i < wanted.length; i += PER_REQUEST) {
      const batch = wanted.slice(i, i + PER_REQUEST);
      bulkNote.textContent = "Uploading " + (i + 1) + "–" + (i + batch.length) + " of " + wanted.length + "…";
      for (const result of await send(batch)) {
        if (result.error) refuse(result.filename, result.error);
        else if (result.duplicate) duplicates += 1;
        else ids.add(result.id);
      }
      sent += batch.length;
      bar.value = sent;
    }
    // A ZIP counts as one file going up and as its documents once indexed.
    bar.max = wanted.length + Math.max(1, ids.size);
    refresh();
    const watch = async () => {
      const docs = await api("GET", "/api/documents");
      const mine = docs.filter((d) => ids.has(d.id));
      const done = mine.filter((d) => d.status === "ready" || d.status === "failed").length;
      bar.value = wanted.length + done;
      bulkNote.textContent = done + " of " + ids.size + " documents indexed" +
        (duplicates ? " · " + duplicates + " already there" : "") +
        (refusedList.children.length ? " · " + refusedList.children.length + " not added" : "");
      if (done < ids.size) setTimeout(watch, 1500);
    };
    await watch();
  }

  function pick(files) {
    const list = Array.from(files);
    if (list.length === 1 && !/\.zip$/i.test(list[0].name)) upload(list[0]);
    else if (list.length) uploadMany(list);
  }

  // A dropped folder arrives as a directory entry: read it (and its subfolders) for files.
  async function filesOf(entry) {
    if (entry.isFile) return [await new Promise((ok, fail) => entry.file(ok, fail))];
    const reader = entry.createReader();
    const found = [];
    for (;;) {
      const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
      if (!batch.length) break;
      for (const child of batch) found.push(...(await filesOf(child)));
    }
    return found;
  }

  input.addEventListener("change", () => { pick(input.files); input.value = ""; });
  const folderInput = document.getElementById("folder-input");
  folderInput.addEventListener("change", () => { uploadMany(Array.from(folderInput.files)); folderInput.value = ""; });
  form.addEventListener("submit", (event) => event.preventDefault());
  for (const type of ["dragenter", "dragover"]) {
    form.addEventListener(type, (event) => { event.preventDefault(); form.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    form.addEventListener(type, () => form.classList.remove("over"));
  }
  form.addEventListener("drop", async (event) => {
    event.preventDefault();
    const entries = Array.from(event.dataTransfer.items || [])
      .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
      .filter(Boolean);
    if (entries.some((entry) => entry.isDirectory)) {
      const files = [];
      for (const entry of entries) files.push(...(await filesOf(entry)));
      uploadMany(files);
    } else {
      pick(event.dataTransfer.files);
    }
  });

  // -- the documents table, refreshed while something is in progress ------------------
  const tbody = document.querySelector("#documents tbody");
  const empty = document.getElementById("empty");
  let timer = null;

  // The collections a document is in: names, and for who may change it a list of
  // checkboxes (each change saved at once).
  function collectionsCell(doc) {
    const cell = el("td");
    const names = doc.collections.map((id) => (known.get(id) || {}).name).filter(Boolean);
    if (!doc.can_delete || !known.size) {
      cell.textContent = names.join(", ") || "—";
      return cell;
    }
    const details = el("details", undefined, "collection-picker");
    details.append(el("summary", names.join(", ") || "—"));
    for (const [id, c] of known) {
      const label = el("label");
      const box = el("input");
      box.type = "checkbox";
      box.value = id;
      box.checked = doc.collections.includes(id);
      box.dataset.file = doc.id;
      label.append(box, " " + c.name);
      details.append(label);
    }
    cell.append(details);
    return cell;
  }

  function row(doc) {
    const tr = el("tr");
    tr.dataset.id = doc.id;
    const status = doc.status + (doc.error ? ": " + doc.error : "");
    tr.append(
      el("td", doc.filename),
      collectionsCell(doc),
      el("td", status, "status status-" + doc.status),
      el("td", doc.chunks_done + " / " + doc.chunks_total),
      el("td", (doc.uploader || "a former member") + ", " + doc.created_at.slice(0, 16).replace("T", " ")),
    );
    const cell = el("td");
    if (doc.status === "failed") {
      const retry = el("button", "Retry");
      retry.type = "button";
      retry.dataset.retry = doc.id;
      cell.append(retry);
    }
    if (doc.can_delete) {
      const remove = el("button", "Remove", "danger");
      remove.type = "button";
      remove.dataset.delete = doc.id;
      cell.append(remove);
    }
    tr.append(cell);
    return tr;
  }

  async function refresh() {
    clearTimeout(timer);
    const open = new Set(Array.from(tbody.querySelectorAll("details[open]")).map((d) => d.closest("tr").dataset.id));
    const docs = await api("GET", "/api/documents");
    tbody.replaceChildren(...docs.map(row));
    for (const details of tbody.querySelectorAll("details")) {
      if (open.has(details.closest("tr").dataset.id)) details.open = true;
    }
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

  tbody.addEventListener("change", async (event) => {
    const box = event.target;
    if (!box.dataset.file) return;
    const chosen = Array.from(box.closest("details").querySelectorAll("input:checked")).map((b) => b.value);
    try {
      await api("PUT", "/api/documents/" + encodeURIComponent(box.dataset.file) + "/collections",
        { collections: chosen });
      await Promise.all([refresh(), loadCollections()]);
    } catch (error) {
      window.alert(error.message);
    }
  });

  // -- collections -----------------------------------------------------------------------
  const known = new Map();
  const collectionList = document.getElementById("collections");
  const noCollections = document.getElementById("no-collections");
  const collectionForm = document.getElementById("collection-form");
  const collectionError = document.getElementById("collection-error");
  const manager = Boolean(root.dataset.manager);

  async function loadCollections() {
    const found = await api("GET", "/api/collections");
    known.clear();
    for (const c of found) known.set(c.id, c);
    collectionList.replaceChildren(...found.map((c) => {
      const li = el("li");
      li.dataset.id = c.id;
      li.append(c.name + " ", el("span", "(" + c.documents + ")", "muted"));
      if (manager) {
        const rename = el("button", "Rename");
        rename.type = "button";
        rename.dataset.rename = c.id;
        const remove = el("button", "Delete", "danger");
        remove.type = "button";
        remove.dataset.remove = c.id;
        li.append(" ", rename, " ", remove);
      }
      return li;
    }));
    noCollections.hidden = found.length > 0;
    const current = uploadCollection.value;
    uploadCollection.replaceChildren(el("option", "none"), ...found.map((c) => {
      const option = el("option", c.name);
      option.value = c.id;
      return option;
    }));
    uploadCollection.firstChild.value = "";
    uploadCollection.value = known.has(current) ? current : "";
  }

  async function changeCollections(work) {
    if (collectionError) collectionError.hidden = true;
    try {
      await work();
      await loadCollections();
      await refresh();
    } catch (error) {
      if (collectionError) {
        collectionError.textContent = error.message;
        collectionError.hidden = false;
      } else {
        window.alert(error.message);
      }
    }
  }

  if (collectionForm) {
    collectionForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const name = document.getElementById("collection-name");
      changeCollections(async () => {
        await api("POST", "/api/collections", { name: name.value });
        name.value = "";
      });
    });
  }
  collectionList.addEventListener("click", (event) => {
    const target = event.target;
    if (target.dataset.remove) {
      const name = known.get(target.dataset.remove).name;
      if (!window.confirm("Delete the collection " + name + "? Its documents stay.")) return;
      changeCollections(() => api("DELETE", "/api/collections/" + encodeURIComponent(target.dataset.remove)));
    } else if (target.dataset.rename) {
      const name = window.prompt("New name", known.get(target.dataset.rename).name);
      if (!name) return;
      changeCollections(() => api("PATCH", "/api/collections/" + encodeURIComponent(target.dataset.rename),
        { name }));
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

  loadCollections().then(refresh);
})();
