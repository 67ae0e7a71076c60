// The leafid upload page: pick or drop 1 to N photos (N: the server's max_images setting), post them to /v1/identify, show the answer.
// Plain browser JavaScript, no build step, no third-party code. Server text is only ever
// inserted with textContent.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("upload-form");
  const MAX_IMAGES = Number(form.dataset.maxImages);
  const input = $("file-input");
  const dropZone = $("drop-zone");
  const previews = $("previews");
  const submit = $("submit");
  const clear = $("clear");
  const status = $("status");
  const errorBox = $("error");
  const result = $("result");
  let files = [];
  let urls = [];
  let thumbnailUrls = [];

  // Scores are calibrated probabilities; they are worded as leafid.wording words them.
  function percent(score) {
    if (score < 0.005) return "<1%";
    if (score >= 0.995) return ">99%";
    return Math.round(score * 100) + "%";
  }

  function likely(score) {
    const p = percent(score);
    if (p[0] === "<") return "under " + p.slice(1) + " likely (calibrated)";
    if (p[0] === ">") return "over " + p.slice(1) + " likely (calibrated)";
    return "about " + p + " likely (calibrated)";
  }

  function textItem(text) {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }

  const RETAKE = "The photo may not show a leaf clearly: retake it closer, on a plain " +
    "background, with a single leaf filling the frame.";
  const NOT_LISTED = "Or the species may not be one this service knows (the list is below).";
  const ONE_PLANT = "Send photos of one plant at a time.";

  function authHeaders() {
    const headers = {};
    const key = $("api-key").value.trim();
    if (key) headers["X-API-Key"] = key;
    return headers;
  }

  async function loadSpecies() {
    const list = $("species");
    if (list.childElementCount > 0) return;
    try {
      const response = await fetch("/v1/species", { headers: authHeaders() });
      if (!response.ok) {
        list.replaceChildren(textItem(await errorText(response)));
        return;
      }
      const species = await response.json();
      list.replaceChildren(...species.map((s) => textItem(s.display_name)));
    } catch (e) {
      list.replaceChildren(textItem("Could not reach the service: " + e.message));
    }
  }

  function showUnknown(data) {
    const top = data.results[0];
    const disagree = data.reason_code === "photos_disagree";
    $("reason-text").textContent = disagree
      ? "These photos look like different plants:"
      : "No species is likely enough to name. The closest, " + top.display_name + ", is " +
        likely(top.score) + ".";
    $("disagreement").replaceChildren(...(data.disagreement || []).map((p) =>
      textItem(p.photo + ": " + p.display_name + ", " + likely(p.score))));
    $("next-steps").replaceChildren(
      ...(disagree ? [ONE_PLANT] : [RETAKE, NOT_LISTED]).map(textItem));
    $("species-box").hidden = disagree;
  }

  function perPhotoText(im) {
    if (im.error) return im.filename + ": could not be used (" + im.error.message + ")";
    const top = im.results[0];
    return im.filename + ": " + (im.unknown ? "unknown (closest: " + top.display_name + ", " +
      likely(top.score) + ")" : top.display_name + ", " + likely(top.score));
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = false;
  }

  function hideMessages() {
    errorBox.hidden = true;
    errorBox.textContent = "";
    status.textContent = "";
  }

  function setFiles(list) {
    hideMessages();
    const images = Array.from(list).filter((f) => !f.type || f.type.startsWith("image/"));
    if (images.length < list.length) {
      showError("Only image files can be used; other files were left out.");
    }
    if (images.length > MAX_IMAGES) {
      showError("Choose at most " + MAX_IMAGES + " photos; only the first " + MAX_IMAGES +
        " are used.");
    }
    files = images.slice(0, MAX_IMAGES);
    renderPreviews();
  }

  function renderPreviews() {
    urls.forEach((u) => URL.revokeObjectURL(u));
    urls = [];
    previews.replaceChildren();
    for (const file of files) {
      const li = document.createElement("li");
      const img = document.createElement("img");
      const url = URL.createObjectURL(file);
      urls.push(url);
      img.src = url;
      img.alt = file.name;
      const name = document.createElement("span");
      name.textContent = file.name;
      li.append(img, name);
      previews.append(li);
    }
    submit.disabled = files.length === 0;
    clear.disabled = files.length === 0;
  }

  function candidateItem(c) {
    const li = document.createElement("li");
    const name = document.createElement("span");
    name.className = "sci";
    name.textContent = c.display_name + " ";
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = likely(c.score);
    li.append(name, pct);
    return li;
  }

  function galleryItem(src, alt, caption, className) {
    const li = document.createElement("li");
    if (className) li.className = className;
    const img = document.createElement("img");
    if (src) img.src = src;
    img.alt = alt;
    const text = document.createElement("span");
    text.textContent = caption;
    li.append(img, text);
    return li;
  }

  // Thumbnails are fetched with the API key (an <img> cannot send it) and shown as blobs.
  async function loadThumbnail(img, url) {
    try {
      const response = await fetch(url, { headers: authHeaders() });
      if (!response.ok) return;
      const blobUrl = URL.createObjectURL(await response.blob());
      thumbnailUrls.push(blobUrl);
      img.src = blobUrl;
    } catch (e) {
      // the reference photo stays blank; the answer does not depend on it
    }
  }

  // The best match's (or closest candidate's) reference photos most like the user's photo.
  function showReferences(data) {
    thumbnailUrls.forEach((u) => URL.revokeObjectURL(u));
    thumbnailUrls = [];
    const top = data.results[0];
    const refs = top.references || [];
    $("compare-box").hidden = refs.length === 0;
    if (refs.length === 0) return;
    $("compare-title").textContent = "Your photo and reference photos of " + top.display_name;
    const used = data.images.findIndex((im) => !im.error);
    const items = [galleryItem(urls[used], "Your photo", "Your photo", "yours")];
    for (const ref of refs) {
      const li = galleryItem(null, "Reference photo " + ref.path,
        "similarity " + ref.similarity.toFixed(2));
      loadThumbnail(li.querySelector("img"), ref.url);
      items.push(li);
    }
    $("compare").replaceChildren(...items);
  }

  // Each photo's heat overlay: where the model looked for the top answer.
  function showExplain(data, asked, note) {
    $("explain-box").hidden = !asked;
    if (!asked) return;
    const shown = data.images.filter((im) => im.explain);
    const name = shown.length ? data.results.find((c) => c.slug === shown[0].explain.slug) : null;
    $("explain-note").textContent = note || ("The part of each photo the model saw; red is " +
      "where it found most of " + (name ? name.display_name : "its answer") + ". Red on " +
      "the background rather than the leaf? Retake the photo closer, on a plain background.");
    $("heatmaps").replaceChildren(...shown.map((im) =>
      galleryItem(im.explain.image, "Where the model looked in " + im.filename, im.filename)));
  }

  function showResult(data) {
    const top = data.results[0];
    result.classList.toggle("unknown", data.unknown);
    const disagree = data.reason_code === "photos_disagree";
    $("result-title").textContent = !data.unknown ? top.scientific_name
      : disagree ? "Unknown — these photos look like different plants"
        : "Unknown — no confident match";
    $("result-names").textContent = data.unknown
      ? "Closest candidate: " + top.display_name
      : top.common_name;
    $("result-bar").style.width = Math.round(top.score * 100) + "%";
    $("result-score").textContent = data.unknown ? "" : "This is " + likely(top.score) + ".";
    $("result-reason").hidden = !data.unknown;
    if (data.unknown) showUnknown(data);
    const list = $("candidates");
    list.replaceChildren(...data.results.slice(1).map(candidateItem));
    // each photo's own answer, when there is more than one photo
    $("per-photo-box").hidden = data.images.length < 2;
    $("per-photo").replaceChildren(...data.images.map((im) => textItem(perPhotoText(im))));
    // a photo that could not be used has an error item in data.images: say which
    const skipped = data.images.filter((im) => im.error);
    const used = data.images.length - skipped.length;
    $("result-meta").textContent = "Model " + data.model.name + " " + data.model.version +
      " · " + used + " photo(s) used" +
      skipped.map((im) => " · skipped " + im.filename + ": " + im.error.message).join("") +
      " · " + Math.round(data.timing.total_ms) + " ms";
    $("caveat").textContent = data.caveat;
    showReferences(data);
    result.hidden = false;
  }

  // The error code of an answer that is an error, read from a copy (the body stays unread).
  async function errorCode(response) {
    if (response.ok) return null;
    try {
      const body = await response.clone().json();
      return body && body.error ? body.error.code : null;
    } catch (e) {
      return null;
    }
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) {
        return body.error.message + " (" + body.error.code + ", HTTP " + response.status + ")";
      }
    } catch (e) {
      // not JSON: fall through
    }
    return "The service answered HTTP " + response.status + ".";
  }

  async function identify(event) {
    event.preventDefault();
    if (files.length === 0) return;
    hideMessages();
    result.hidden = true;
    submit.disabled = true;
    status.textContent = "Identifying…";
    const body = new FormData();
    for (const file of files) body.append("images", file, file.name);
    const explain = $("explain").checked;
    const post = (url) => fetch(url, { method: "POST", body, headers: authHeaders() });
    let note = "";
    try {
      let response = await post(explain ? "/v1/identify?explain=1" : "/v1/identify");
      if (explain && await errorCode(response) === "missing_output") {
        // a model older than class maps: the answer still comes, without the overlay
        note = "This model cannot show where it looked (it predates that feature).";
        response = await post("/v1/identify");
      }
      if (!response.ok) {
        if (response.status === 401) $("key-box").open = true;
        showError(await errorText(response));
        status.textContent = "";
        return;
      }
      const data = await response.json();
      showResult(data);
      showExplain(data, explain, note);
      status.textContent = "Done.";
    } catch (e) {
      showError("Could not reach the service: " + e.message);
      status.textContent = "";
    } finally {
      submit.disabled = files.length === 0;
    }
  }

  input.addEventListener("change", () => setFiles(input.files));
  clear.addEventListener("click", () => {
    input.value = "";
    files = [];
    renderPreviews();
    hideMessages();
    result.hidden = true;
  });
  form.addEventListener("submit", identify);
  $("species-box").addEventListener("toggle", () => {
    if ($("species-box").open) loadSpecies();
  });
  for (const name of ["dragenter", "dragover"]) {
    dropZone.addEventListener(name, (e) => {
      e.preventDefault();
      dropZone.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropZone.addEventListener(name, (e) => {
      e.preventDefault();
      dropZone.classList.remove("over");
    });
  }
  dropZone.addEventListener("drop", (e) => setFiles(e.dataTransfer.files));
})();
