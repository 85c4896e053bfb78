// The terminal page: xterm.js over the workspace's exec WebSocket
// (`/api/v1/workspaces/{name}/exec`, the endpoint `lapdev workspace shell`
// uses), signed in by the session cookie; the browser's `Origin` is checked by
// the server. Bundled with xterm.js by lapdev-server/build.rs (esbuild).
//
// The WebSocket's binary messages carry `lapdev_kube_rpc::stream` exec frames:
// `type: u8`, `length: u32` big-endian, payload. Client → workspace: 0x00 stdin,
// 0x02 resize (cols, rows: u16); workspace → client: 0x10 stdout, 0x11 stderr,
// 0x12 exit (code: i32), 0x13 error (UTF-8).
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import './terminal.css';

const STDIN = 0x00;
const RESIZE = 0x02;
const STDOUT = 0x10;
const STDERR = 0x11;
const EXIT = 0x12;
const ERROR = 0x13;
const HEADER = 5;
const MAX_PAYLOAD = 64 * 1024;

export function encodeFrame(type, payload) {
  const out = new Uint8Array(HEADER + payload.length);
  out[0] = type;
  new DataView(out.buffer).setUint32(1, payload.length);
  out.set(payload, HEADER);
  return out;
}

function resizeFrame(cols, rows) {
  const p = new Uint8Array(4);
  const v = new DataView(p.buffer);
  v.setUint16(0, cols);
  v.setUint16(2, rows);
  return encodeFrame(RESIZE, p);
}

// Frames from bytes that arrive in arbitrary pieces.
export class FrameDecoder {
  constructor() { this.buf = new Uint8Array(0); }

  push(bytes) {
    const b = new Uint8Array(this.buf.length + bytes.length);
    b.set(this.buf);
    b.set(bytes, this.buf.length);
    this.buf = b;
  }

  // The next whole frame ({type, payload}), or null when more bytes are needed.
  next() {
    if (this.buf.length < HEADER) return null;
    const len = new DataView(this.buf.buffer, this.buf.byteOffset).getUint32(1);
    if (len > MAX_PAYLOAD) throw new Error(`a frame of ${len} bytes is over the limit`);
    if (this.buf.length < HEADER + len) return null;
    const frame = { type: this.buf[0], payload: this.buf.slice(HEADER, HEADER + len) };
    this.buf = this.buf.slice(HEADER + len);
    return frame;
  }
}

function setup() {
  const box = document.getElementById('terminal');
  if (!box) return;
  const status = document.getElementById('terminal-status');
  const again = document.getElementById('terminal-again');
  const say = (state, text) => {
    document.body.dataset.terminal = state;
    status.textContent = text;
  };
  const term = new Terminal({
    cursorBlink: true,
    convertEol: false,
    scrollback: 5000,
    fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace',
    fontSize: 14,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();

  const query = new URLSearchParams(box.dataset.query);
  query.set('cols', String(term.cols));
  query.set('rows', String(term.rows));
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(`${scheme}//${location.host}${box.dataset.path}?${query}`);
  ws.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  const decoder = new FrameDecoder();
  let opened = false;
  let ended = false;
  // A close reason longer than a close frame holds (123 bytes) arrives whole
  // as a text message just before the close.
  let fullReason = '';
  const finish = (state, text) => {
    if (ended) return;
    ended = true;
    say(state, text);
    term.write(`\r\n\x1b[2m[${text}]\x1b[0m\r\n`);
    if (again) again.hidden = false;
  };

  say('connecting', 'Connecting…');
  ws.addEventListener('open', () => {
    opened = true;
    say('open', 'Connected.');
    term.focus();
  });
  ws.addEventListener('message', (ev) => {
    if (typeof ev.data === 'string') {
      fullReason = ev.data;
      return;
    }
    decoder.push(new Uint8Array(ev.data));
    for (let f = decoder.next(); f; f = decoder.next()) {
      if (f.type === STDOUT || f.type === STDERR) term.write(f.payload);
      else if (f.type === EXIT) {
        const code = new DataView(f.payload.buffer).getInt32(0);
        finish('exited', `The shell exited with code ${code}.`);
      } else if (f.type === ERROR) {
        finish('failed', `The session failed: ${new TextDecoder().decode(f.payload)}`);
      }
    }
  });
  ws.addEventListener('close', (ev) => {
    if (!opened) {
      finish('refused', 'The server refused the session or could not be reached; reload the page to see the workspace’s state.');
    } else if (ev.code !== 1000 && ev.reason) {
      const reason = fullReason.startsWith(ev.reason) ? fullReason : ev.reason;
      finish('closed', `The session ended: ${reason}`);
    } else {
      finish('closed', 'The session ended.');
    }
  });
  const send = (frame) => { if (ws.readyState === WebSocket.OPEN) ws.send(frame); };
  term.onData((d) => send(encodeFrame(STDIN, encoder.encode(d))));
  term.onBinary((d) => send(encodeFrame(STDIN, Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff))));
  term.onResize(({ cols, rows }) => send(resizeFrame(cols, rows)));
  window.addEventListener('resize', () => fit.fit());
}

document.addEventListener('DOMContentLoaded', setup);
