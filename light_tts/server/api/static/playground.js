// The playground page: choose a voice (a saved one, or an uploaded prompt and its transcript), type a text, and
// hear it stream from POST /inference_zero_shot (stream=true). Saved voices are managed through
// /v1/audio/voices when the server has that API (found in its /openapi.json); without it, the upload form is
// the voice. A model's named voices (Orpheus: tara, ...) are in the same choice and ask for their model.
// document.body.dataset.ready turns "true" once the page knows which.

import { PcmStreamPlayer, SAMPLE_RATE } from "./pcm-player.js";

const $ = (id) => document.getElementById(id);
const VOICES_PATH = "/v1/audio/voices";
let hasVoicesApi = false;

const player = new PcmStreamPlayer($("player"), (state) => {
  $("status").textContent = state.state;
  $("ttfa").textContent = state.ttfaMs ? `${state.ttfaMs} ms` : "–";
  $("received").textContent = `${(Number(state.bytes || 0) / 2 / SAMPLE_RATE).toFixed(2)} s`;
  const busy = state.state === "requesting" || state.state === "streaming" || state.state === "playing";
  $("speak").disabled = busy;
  $("stop").disabled = !busy;
});

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// The server's error body is {"error": message, "kind": kind}; anything else is shown as its status.
async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.kind || "error"}: ${body.error} (HTTP ${response.status})`;
  } catch (e) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

async function serverHasVoicesApi() {
  try {
    const response = await fetch("/openapi.json", { headers: headers() });
    if (!response.ok) return false;
    const spec = await response.json();
    return Boolean(spec.paths && spec.paths[VOICES_PATH]);
  } catch (e) {
    return false;
  }
}

async function loadVoices() {
  const response = await fetch(VOICES_PATH, { headers: headers() });
  if (response.status === 404) return disableVoicesApi();
  if (!response.ok) return showError(`saved voices: ${await errorText(response)}`);
  const voices = (await response.json()).data || [];
  const select = $("voice-select");
  const chosen = select.value;
  select.replaceChildren(new Option("(use the upload below)", ""));
  const list = $("voice-list");
  list.replaceChildren();
  for (const voice of voices) {
    if (voice.model) {  // a model's named voice (Orpheus): spoken by that model, nothing to list or delete
      const option = new Option(`${voice.name} (${voice.model})`, voice.id);
      option.dataset.model = voice.model;
      select.add(option);
      continue;
    }
    select.add(new Option(`${voice.name} (${Number(voice.duration_s).toFixed(1)} s)`, voice.id));
    const item = document.createElement("li");
    item.dataset.voiceId = voice.id;
    item.textContent = `${voice.name}: "${voice.text}" `;
    const remove = document.createElement("button");
    remove.className = "small";
    remove.type = "button";
    remove.textContent = "Delete";
    remove.addEventListener("click", () => deleteVoice(voice.id));
    item.append(remove);
    list.append(item);
  }
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  const saved = voices.filter((v) => !v.model).length;
  $("voices-note").textContent = saved ? "" : "No saved voices yet: upload one and save it.";
}

function disableVoicesApi() {
  hasVoicesApi = false;
  $("saved-voices").hidden = true;
  $("save-voice-row").hidden = true;
  $("voices-note").textContent = "This server has no saved-voices API: each request sends the uploaded prompt.";
}

async function saveVoice() {
  showError("");
  const file = $("prompt-wav").files[0];
  if (!file || !$("prompt-text").value.trim()) return showError("Choose a prompt audio file and type what it says.");
  const form = new FormData();
  form.append("audio", file);
  // an empty transcript field means "no transcript" (the field left out), not an empty one (a 400)
  if ($("prompt-text").value.trim()) form.append("text", $("prompt-text").value);
  form.append("name", $("voice-name").value.trim() || file.name);
  const response = await fetch(VOICES_PATH, { method: "POST", body: form, headers: headers() });
  if (!response.ok) return showError(`saving the voice: ${await errorText(response)}`);
  const voice = await response.json();
  await loadVoices();
  $("voice-select").value = voice.id;
}

async function deleteVoice(id) {
  showError("");
  const response = await fetch(`${VOICES_PATH}/${encodeURIComponent(id)}`, { method: "DELETE", headers: headers() });
  if (!response.ok) return showError(`deleting the voice: ${await errorText(response)}`);
  await loadVoices();
}

function speechForm() {
  const form = new FormData();
  form.append("tts_text", $("tts-text").value);
  form.append("stream", "true");
  const voiceId = hasVoicesApi ? $("voice-select").value : "";
  if (voiceId) {
    form.append("voice_id", voiceId);
    const model = $("voice-select").selectedOptions[0].dataset.model;
    if (model) form.append("tts_model_name", model);
    return form;
  }
  const file = $("prompt-wav").files[0];
  if (!file) return null;
  form.append("prompt_wav", file);
  form.append("prompt_text", $("prompt-text").value);
  return form;
}

async function speak() {
  showError("");
  const form = speechForm();
  if (!form) return showError("Choose a voice: upload a prompt audio file (and its transcript) or a saved voice.");
  const startedAt = performance.now();
  player.setState("requesting", { bytes: 0, ttfaMs: "" });
  try {
    const response = await fetch("/inference_zero_shot", { method: "POST", body: form, headers: headers() });
    if (!response.ok) {
      player.setState("error");
      return showError(await errorText(response));
    }
    await player.play(response, startedAt);
  } catch (e) {
    if (player.el.dataset.state === "stopped") return;
    player.setState("error");
    showError(`the stream failed: ${e.message}`);
  }
}

function stop() {
  player.stop();
  player.setState("stopped");
}

async function init() {
  $("speak").addEventListener("click", speak);
  $("stop").addEventListener("click", stop);
  $("save-voice").addEventListener("click", saveVoice);
  hasVoicesApi = await serverHasVoicesApi();
  if (hasVoicesApi) {
    $("saved-voices").hidden = false;
    $("save-voice-row").hidden = false;
    await loadVoices();
  } else {
    disableVoicesApi();
  }
  document.body.dataset.voicesApi = String(hasVoicesApi);
  document.body.dataset.ready = "true";
}

init();
