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
  const NOT_LISTED = "Or the species may not be one this service knows (\u201cSpecies this " +
    "service knows\u201d, above, lists them).";
  const NOT_ALLOWED = "Or the species may not be among those you allowed in \u201cOnly these " +
    "species or genera\u201d.";
  const ONE_PLANT = "Send photos of one plant at a time.";

  // A genus or family answer in words, as leafid.wording.backed_off words it:
  // "genus Salix (no species sure; between Salix alba, Salix aurita)".
  function hesitation(answer) {
    return "no species sure; between " +
      answer.hesitates_between.map((c) => c.display_name).join(", ");
  }

  function backedOff(answer) {
    return answer.rank + " " + answer.best_match + " (" + hesitation(answer) + ")";
  }

  function isBackedOff(answer) {
    return answer.rank === "genus" || answer.rank === "family";
  }

  function authHeaders() {
    const headers = {};
    const key = $("api-key").value.trim();
    if (key) headers["X-API-Key"] = key;
    return headers;
  }

  // The classes the service knows (/v1/species), fetched once; again after a failure.
  let speciesRequest = null;

  function speciesList() {
    if (!speciesRequest) {
      speciesRequest = fetch("/v1/species", { headers: authHeaders() }).then(async (response) => {
        if (response.ok) return response.json();
        const error = new Error(await errorText(response));
        error.status = response.status;
        throw error;
      });
      speciesRequest.catch(() => {
        speciesRequest = null;
      });
    }
    return speciesRequest;
  }

  // The words for a failed speciesList(): the service's error, or why it was not reached.
  function failure(e) {
    return e.status ? e.message : "Could not reach the service: " + e.message;
  }

  async function loadSpecies() {
    const list = $("species");
    if (list.dataset.loaded) return;
    try {
      const species = await speciesList();
      list.replaceChildren(...species.map((s) =>
        textItem(s.display_name + (s.genus ? " \u00b7 genus " + s.genus : ""))));
      list.dataset.loaded = "yes";
    } catch (e) {
      list.replaceChildren(textItem(failure(e)));
    }
  }

  // The flora filter as query parameters. A name is a species when it is a class slug
  // (as the service's own --only reads it) or a scientific name; any other name is sent
  // as a genus, and the service answers unknown_name for one it does not know.
  async function floraParams() {
    const params = new URLSearchParams();
    const names = $("flora").value.split(",").map((n) => n.trim()).filter((n) => n);
    if (names.length === 0) return params;
    const species = await speciesList();
    for (const name of names) {
      const lower = name.toLowerCase();
      const known = species.find((s) => s.slug === name) ||
        species.find((s) => s.scientific_name.toLowerCase() === lower);
      if (known) params.append("species", known.slug);
      else params.append("genus", name);
    }
    return params;
  }

  // The names of the classes an answer was restricted to (slugs when the list is out of reach).
  async function floraNames(flora) {
    if (!flora) return null;
    try {
      const species = await speciesList();
      return flora.map((slug) => (species.find((s) => s.slug === slug) || { display_name: slug })
        .display_name);
    } catch (e) {
      return flora;
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
    const steps = disagree ? [ONE_PLANT] : [RETAKE, data.flora ? NOT_ALLOWED : NOT_LISTED];
    $("next-steps").replaceChildren(...steps.map(textItem));
  }

  function perPhotoText(im) {
    if (im.error) return im.filename + ": could not be used (" + im.error.message + ")";
    const top = im.results[0];
    if (isBackedOff(im)) return im.filename + ": " + backedOff(im) + ", " + likely(im.match_score);
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

  // The title of a genus or family answer: "Genus " and the taxon's name (in italics).
  function taxonTitle(data) {
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = data.rank[0].toUpperCase() + data.rank.slice(1) + " ";
    const name = document.createElement("span");
    name.textContent = data.best_match;
    return [rank, name];
  }

  function showResult(data, flora) {
    const top = data.results[0];
    const taxon = isBackedOff(data);
    result.classList.toggle("unknown", data.unknown);
    const disagree = data.reason_code === "photos_disagree";
    $("result-title").replaceChildren(...(taxon ? taxonTitle(data)
      : [!data.unknown ? top.scientific_name
        : disagree ? "Unknown — these photos look like different plants"
          : "Unknown — no confident match"]));
    $("result-names").textContent = taxon
      ? hesitation(data)[0].toUpperCase() + hesitation(data).slice(1)
      : data.unknown ? "Closest candidate: " + top.display_name : top.common_name;
    $("result-bar").style.width = Math.round((data.unknown ? top.score : data.match_score) *
      100) + "%";
    // a genus's (family's) chance is its species' calibrated chances added up
    $("result-score").textContent = data.unknown ? ""
      : taxon ? "This " + data.rank + " is " + likely(data.match_score) +
        ": the chances of its species added up."
        : "This is " + likely(data.match_score) + ".";
    $("result-flora").hidden = !flora;
    $("result-flora").textContent = flora
      ? "Answered among these only (flora filter): " + flora.join(", ") + "." : "";
    $("result-reason").hidden = !data.unknown;
    if (data.unknown) showUnknown(data);
    // at genus or family rank no species is the answer: every candidate is listed
    $("candidates-title").textContent = taxon ? "Species candidates" : "Other candidates";
    const list = $("candidates");
    list.replaceChildren(...data.results.slice(taxon ? 0 : 1).map(candidateItem));
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
    const floraInput = $("flora");
    floraInput.removeAttribute("aria-invalid");
    let note = "";
    try {
      const params = await floraParams();
      const post = (extra) => {
        const query = new URLSearchParams([...params, ...extra]).toString();
        return fetch("/v1/identify" + (query ? "?" + query : ""),
          { method: "POST", body, headers: authHeaders() });
      };
      let response = await post(explain ? [["explain", "1"]] : []);
      if (explain && await errorCode(response) === "missing_output") {
        // a model older than class maps: the answer still comes, without the overlay
        note = "This model cannot show where it looked (it predates that feature).";
        response = await post([]);
      }
      if (!response.ok) {
        if (response.status === 401) $("key-box").open = true;
        const unknownName = await errorCode(response) === "unknown_name";
        const text = await errorText(response);
        if (unknownName) {
          // the list of the names it takes opens under the field
          floraInput.setAttribute("aria-invalid", "true");
          $("species-box").open = true;
          showError("Check \u201cOnly these species or genera\u201d: " + text + ".");
        } else {
          showError(text);
        }
        status.textContent = "";
        return;
      }
      const data = await response.json();
      showResult(data, await floraNames(data.flora));
      showExplain(data, explain, note);
      status.textContent = "Done.";
    } catch (e) {
      if (e.status === 401) $("key-box").open = true;
      showError(failure(e));
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
