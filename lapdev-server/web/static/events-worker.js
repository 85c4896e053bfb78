// Lapdev dashboard: one event stream per browser, shared by all its tabs.
//
// A SharedWorker (one per origin and script URL) holds the EventSource; each
// tab's port gets every event as {type, data, id}. The stream opens with the
// first tab and closes when the last one says goodbye; a tab that connects
// after the stream was closed (signed out, or the server ended it) opens it
// again.
'use strict';

const ports = new Set();
let source = null;

function broadcast(message) {
  for (const p of ports) p.postMessage(message);
}

function open() {
  if (source && source.readyState !== EventSource.CLOSED) return;
  source = new EventSource('/events');
  for (const type of ['change', 'reload', 'ended']) {
    source.addEventListener(type, (e) => broadcast({ type, data: e.data, id: e.lastEventId }));
  }
  source.addEventListener('open', () => broadcast({ type: 'open' }));
  source.addEventListener('error', () => {
    broadcast({ type: source.readyState === EventSource.CLOSED ? 'closed' : 'error' });
  });
}

function close() {
  if (source) source.close();
  source = null;
}

onconnect = (ev) => {
  const port = ev.ports[0];
  ports.add(port);
  port.onmessage = (m) => {
    if (m.data === 'bye') {
      ports.delete(port);
      if (ports.size === 0) close();
    } else if (m.data === 'ended') {
      // A tab learnt the session is over (it signed out): stop listening.
      close();
    }
  };
  open();
  if (source.readyState === EventSource.OPEN) port.postMessage({ type: 'open' });
};
