// The candidate's page. It captures the microphone, plays the interviewer and reports exactly what
// it has played; it decides nothing: the engine, running the interview's flow, decides every turn.
// The protocol is described in engine/serve/link.py.

const $ = (id) => document.getElementById(id);
const token = decodeURIComponent(location.hash.slice(1));
if (token) history.replaceState(null, "", location.pathname); // keep the link out of the history

const WORDS = { idle: "Not started", connecting: "Connecting…", listening: "Listening", thinking: "Thinking…",
  speaking: "Speaking", over: "Interview over", failed: "Interview stopped", refused: "Cannot start" };

const page = {
  ws: null,
  resume: null, // given by the engine; lets a dropped connection rejoin the same interview
  retried: false, // the page reconnects once
  over: false, // ended or refused: no reconnect
  engineState: "listening",
  speaking: false,
  reports: [], // playback reports waiting for the connection
  ctx: null,
  playback: null,
  current: null, // {response, item} the next binary frames belong to
  lines: new Map(), // response id -> its transcript line
  cut: new Set(), // responses the candidate talked over
};

// What the candidate sees.

function showState(state) {
  $("state").dataset.state = state;
  $("state").textContent = WORDS[state] || state;
}

function refreshState() {
  if (!page.over) showState(page.speaking ? "speaking" : page.engineState);
}

function showMessage(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.dataset.kind = kind;
  m.hidden = false;
}

function addLine(role, text, response) {
  const p = document.createElement("p");
  p.className = role;
  const who = document.createElement("b");
  who.textContent = role === "interviewer" ? "Interviewer: " : "You: ";
  p.append(who, document.createTextNode(text));
  $("transcript").append(p);
  p.scrollIntoView({ block: "end" });
  if (response) {
    page.lines.set(response, p);
    if (page.cut.has(response)) markCut(response);
  }
}

function markCut(response) {
  // The transcript holds the whole text; the candidate heard only the start of it.
  page.cut.add(response);
  const p = page.lines.get(response);
  if (p && !p.classList.contains("cut")) {
    p.classList.add("cut");
    const note = document.createElement("i");
    note.textContent = " (interrupted)";
    p.append(note);
  }
}

function finish(state, text, kind) {
  page.over = true;
  showState(state);
  showMessage(text, kind);
  stopAudio();
}

// The connection to the engine.

function connect() {
  showState("connecting");
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  page.ws = ws;
  ws.onopen = () => {
    ws.send(JSON.stringify(page.resume ? { type: "hello", resume: page.resume } : { type: "hello", token }));
  };
  ws.onmessage = (e) => (typeof e.data === "string" ? onMessage(JSON.parse(e.data)) : onAudio(e.data));
  ws.onclose = (e) => {
    if (page.ws === ws) page.ws = null;
    if (page.over) return;
    if (e.code >= 4000) {
      // Refused: the reason came as a message just before; this is in case it did not.
      finish("refused", e.reason ? `The interview could not start (${e.reason}).` : "The interview could not start.",
        "error");
    } else if (page.resume && !page.retried) {
      page.retried = true;
      showMessage("The connection dropped; reconnecting…", "warning");
      setTimeout(connect, 1000);
    } else {
      finish("failed", "The connection to the interview was lost. What you said so far has been saved.", "error");
    }
  };
}

function onMessage(m) {
  switch (m.type) {
    case "welcome":
      page.resume = m.resume;
      if (page.retried) $("message").hidden = true;
      while (page.reports.length) send(page.reports.shift());
      refreshState();
      break;
    case "audio":
      page.current = { response: m.response, item: m.item };
      break;
    case "end":
    case "stop":
      page.playback.port.postMessage({ type: m.type, response: m.response });
      break;
    case "status":
      page.engineState = m.state;
      refreshState();
      break;
    case "transcript":
      if (m.text) addLine(m.role, m.text, m.response);
      break;
    case "ended":
      finish("over", m.message, m.outcome === "completed" || m.outcome === "completed_degraded" ? "ok" : "error");
      break;
    case "refused":
      finish("refused", m.message, "error");
      break;
  }
}

function onAudio(buffer) {
  if (!page.current) return;
  const pcm = new Int16Array(buffer);
  page.playback.port.postMessage({ type: "chunk", ...page.current, pcm }, [pcm.buffer]);
}

function send(message) {
  if (page.ws && page.ws.readyState === WebSocket.OPEN && page.resume) page.ws.send(JSON.stringify(message));
  else if (message.type !== "progress") page.reports.push(message); // kept for the reconnect
}

// Sound.

async function startAudio() {
  const ctx = new AudioContext();
  page.ctx = ctx;
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  await ctx.audioWorklet.addModule("/static/playback-worklet.js");
  const mic = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  page.mic = mic;
  const capture = new AudioWorkletNode(ctx, "capture", { numberOfOutputs: 1, outputChannelCount: [1] });
  capture.port.onmessage = (e) => {
    if (page.ws && page.ws.readyState === WebSocket.OPEN && page.resume && !page.over) page.ws.send(e.data);
  };
  ctx.createMediaStreamSource(mic).connect(capture);
  capture.connect(ctx.destination);
  const playback = new AudioWorkletNode(ctx, "playback", { numberOfInputs: 0, outputChannelCount: [1] });
  playback.port.onmessage = (e) => onPlayback(e.data);
  playback.connect(ctx.destination);
  page.playback = playback;
  await ctx.resume();
}

function onPlayback(m) {
  if (m.type === "playing") {
    page.speaking = m.on;
    refreshState();
  } else if (m.type === "done" || m.type === "started") {
    // Rendered is not yet heard: samples reach the speaker one output latency later.
    const latency = (page.ctx.outputLatency || 0) + (page.ctx.baseLatency || 0);
    setTimeout(() => send(m), latency * 1000);
  } else {
    if (m.type === "stopped" && m.response) markCut(m.response);
    send(m); // progress, and stopped at once: the engine truncates with its played_ms
  }
}

function stopAudio() {
  if (page.mic) page.mic.getTracks().forEach((t) => t.stop());
  if (page.ctx) page.ctx.close();
  page.mic = null;
  page.ctx = null;
}

$("start").addEventListener("click", async () => {
  $("start").disabled = true;
  if (!token) {
    finish("refused", "This page needs your personal interview link. Please open the link you received.", "error");
    return;
  }
  try {
    await startAudio();
  } catch (err) {
    const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
    finish("failed", denied
      ? "The interview needs your microphone. Please allow it for this page (see the icon in the address bar) and reload."
      : `Your browser could not start the sound (${err && err.message ? err.message : err}).`, "error");
    return;
  }
  $("intro").hidden = true;
  $("start").hidden = true;
  connect();
});

window.__interview = page; // for tests and the curious: the page's state, nothing secret
