// The page at `/`: upload a model with a few options, follow the job, show its report. It talks only to the
// public HTTP API (docs/http-api.md). The API key stays in sessionStorage (this tab, until it is closed).
"use strict";

(function () {
  var KEY_STORE = "sepconv.apiKey";
  var POLL_MS = 500;
  var $ = function (id) { return document.getElementById(id); };
  var dataField = "inputs";  // 'data' when the server documents it (accuracy recovery), else verification inputs
  var urls = [];             // object URLs to release when a new job starts

  function headers() {
    var key = $("api-key").value.trim();
    return key ? { "Authorization": "Bearer " + key } : {};
  }

  function show(id, on) { $(id).hidden = !on; }

  function showError(code, message) {
    $("error-code").textContent = code || "";
    $("error-message").textContent = message || "";
    show("error", true);
  }

  // The API's own message, as it is; the status line only when the answer has no error body.
  function apiError(status, text, statusText) {
    try {
      var body = JSON.parse(text);
      if (body && body.error) { return { code: body.error.code, message: body.error.message }; }
    } catch (e) { /* not JSON: fall through */ }
    return { code: "http_" + status, message: status ? status + " " + (statusText || "") : "the server could not be reached" };
  }

  function request(method, path, responseType) {
    return fetch(path, { method: method, headers: headers(), cache: "no-store" }).then(function (r) {
      if (r.ok) { return responseType === "blob" ? r.blob().then(function (b) { return { body: b, response: r }; }) : r.text(); }
      return r.text().then(function (t) { throw apiError(r.status, t, r.statusText); });
    }, function () { throw apiError(0, ""); });
  }

  // Options the server knows, from its OpenAPI schema: the recovery choices and the name of the data file part.
  function loadSchema() {
    fetch("/openapi.json").then(function (r) { return r.ok ? r.json() : null; }).then(function (doc) {
      var form = doc && doc.paths && doc.paths["/convert"] && doc.paths["/convert"].post.requestBody.content["multipart/form-data"].schema.properties;
      if (!form) { return; }
      if (form.data && form.data.format === "binary") {
        dataField = "data";
        $("data-label").textContent = "Data";
        $("data-hint").textContent = form.data.description || "optional samples for accuracy recovery";
      } else if (form.inputs) {
        $("data-label").textContent = "Verification inputs";
        $("data-hint").textContent = form.inputs.description || "optional .npz";
      }
      var recover = form.recover;
      var choices = recover && (recover.enum || (recover.anyOf || []).reduce(function (acc, v) { return acc.concat(v.enum || []); }, []));
      if (choices && choices.length) {
        choices.forEach(function (c) {
          var o = document.createElement("option");
          o.value = c; o.textContent = c;
          $("recover").appendChild(o);
        });
        show("recover-box", true);
      }
    }).catch(function () { /* the form works without it */ });
  }

  function formData() {
    var fd = new FormData();
    fd.append("model", $("model").files[0]);
    if ($("data").files.length) { fd.append(dataField, $("data").files[0]); }
    var value = $("policy-value").value.trim();
    if (value && $("policy").value) { fd.append($("policy").value, value); }
    fd.append("order", $("order").value);
    if (!$("recover-box").hidden && $("recover").value) { fd.append("recover", $("recover").value); }
    $("input-shape").value.split(/\s+/).filter(Boolean).forEach(function (s) { fd.append("input_shape", s); });
    return fd;
  }

  // A typical value for each rank policy; "default" sends none (the server's default: energy 0.9, or with data
  // max_accuracy_drop 0.01).
  var POLICY_VALUES = { energy: "0.9", rank: "2", target_params: "0.5", target_macs: "0.5", max_accuracy_drop: "0.01" };

  function policyChanged() {
    var policy = $("policy").value, field = $("policy-value");
    field.disabled = !policy;
    field.placeholder = policy ? POLICY_VALUES[policy] || "" : "default";
    field.value = policy ? POLICY_VALUES[policy] || "" : "";
  }

  function reset() {
    urls.forEach(function (u) { URL.revokeObjectURL(u); });
    urls = [];
    show("error", false); show("result", false); show("status", true);
    $("report").removeAttribute("srcdoc");
    $("job-id").textContent = "";
    $("phase").textContent = "upload"; $("stage").textContent = ""; $("percent").textContent = "";
    $("upload-progress").value = 0; show("upload-progress", true); show("job-progress", false);
  }

  function submit(event) {
    event.preventDefault();
    if (!$("model").files.length) { showError("", "choose a model file"); return; }
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    reset();
    $("submit").disabled = true;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", "/convert");
    var h = headers();
    Object.keys(h).forEach(function (k) { xhr.setRequestHeader(k, h[k]); });
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) {
        $("upload-progress").value = e.loaded / e.total;
        $("percent").textContent = Math.round(100 * e.loaded / e.total) + " %";
      }
    };
    xhr.onload = function () {
      if (xhr.status >= 200 && xhr.status < 300) {
        $("upload-progress").value = 1;
        follow(JSON.parse(xhr.responseText));
      } else {
        var err = apiError(xhr.status, xhr.responseText, xhr.statusText);
        done(); showError(err.code, err.message);
      }
    };
    xhr.onerror = function () { done(); showError("network", "the upload failed: the server could not be reached"); };
    xhr.send(formData());
  }

  function done() { $("submit").disabled = false; }

  function render(job) {
    $("job-id").textContent = job.id;
    $("phase").textContent = job.status;
    var detail = job.stage_detail && typeof job.stage_detail === "object" ? Object.keys(job.stage_detail).map(function (k) {
      var v = job.stage_detail[k];
      return k + " " + (typeof v === "number" ? +v.toPrecision(4) : v);
    }).join(", ") : "";
    $("stage").textContent = "stage " + job.stage + (detail ? " (" + detail + ")" : "");
    $("percent").textContent = Math.round(100 * job.progress) + " %";
    show("upload-progress", false); show("job-progress", true);
    $("job-progress").value = job.progress;
  }

  function follow(job) {
    render(job);
    if (job.status === "succeeded") { return finished(job); }
    if (job.status === "failed" || job.status === "cancelled") {
      done();
      var e = job.error || {};
      showError(e.code || job.status, e.message || "the job was " + job.status);
      return;
    }
    setTimeout(function () {
      request("GET", "/jobs/" + encodeURIComponent(job.id)).then(function (t) { follow(JSON.parse(t)); },
        function (err) { done(); showError(err.code, err.message); });
    }, POLL_MS);
  }

  function objectUrl(blob) { var u = URL.createObjectURL(blob); urls.push(u); return u; }

  function downloadName(response, fallback) {
    var cd = response.headers.get("Content-Disposition") || "";
    var star = /filename\*=UTF-8''([^;]+)/i.exec(cd);
    if (star) { try { return decodeURIComponent(star[1]); } catch (e) { /* use the plain form */ } }
    var plain = /filename="([^"]+)"/i.exec(cd);
    return plain ? plain[1] : fallback;
  }

  function finished(job) {
    var base = "/jobs/" + encodeURIComponent(job.id);
    request("GET", base + "/report.html").then(function (html) {
      $("report").srcdoc = html;  // sandboxed: its script sorts the table, it cannot reach this page
      var page = objectUrl(new Blob([html], { type: "text/html" }));
      $("download-report").href = page;
      $("download-report").download = job.filename.replace(/\.[^.]*$/, "") + "-report.html";
      $("open-report").href = page;
      var model = $("download-model");
      model.dataset.path = base + "/model";
      model.dataset.name = job.filename;
      delete model.dataset.ready;
      model.href = "#";
      show("result", true);
      done();
    }, function (err) { done(); showError(err.code, err.message); });
  }

  // The model is fetched when asked for (it may be large), with the key, then handed to the browser as a file.
  function downloadModel(event) {
    var a = event.currentTarget;
    if (a.dataset.ready) { return; }  // the second, programmatic click: let the browser save the blob
    event.preventDefault();
    a.setAttribute("aria-busy", "true");
    request("GET", a.dataset.path, "blob").then(function (got) {
      a.href = objectUrl(got.body);
      a.download = downloadName(got.response, a.dataset.name);
      a.dataset.ready = "1";
      a.removeAttribute("aria-busy");
      a.click();
    }, function (err) { a.removeAttribute("aria-busy"); showError(err.code, err.message); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
    $("api-key").addEventListener("change", function () { sessionStorage.setItem(KEY_STORE, $("api-key").value.trim()); });
    $("policy").addEventListener("change", policyChanged);
    $("convert-form").addEventListener("submit", submit);
    $("download-model").addEventListener("click", downloadModel);
    loadSchema();
  });
})();
