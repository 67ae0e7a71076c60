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

  async function loadSpecies() {
    const list = $("species");
    if (list.childElementCount > 0) return;
    const headers = {};
    const key = $("api-key").value.trim();
    if (key) headers["X-API-Key"] = key;
    try {
      const response = await fetch("/v1/species", { headers });
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
    result.hidden = false;
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
    const headers = {};
    const key = $("api-key").value.trim();
    if (key) headers["X-API-Key"] = key;
    try {
      const response = await fetch("/v1/identify", { method: "POST", body, headers });
      if (!response.ok) {
        if (response.status === 401) $("key-box").open = true;
        showError(await errorText(response));
        status.textContent = "";
        return;
      }
      showResult(await response.json());
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
