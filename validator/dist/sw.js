// The app shell, cached per build: VERSION is the hash of the sources this bundle was built
// from (scripts/wasm writes it), so each deployment is a new worker and a new cache.
const VERSION = '6dae15e787aa4e11';
const CACHE = 'ticketing-validator-' + VERSION;
const SHELL = ['./', 'index.html', 'boot.js', 'ticketing_validator.js', 'ticketing_validator_bg.wasm',
  'style.css', 'manifest.webmanifest', 'icon-192.png', 'icon-512.png'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys().then((keys) => Promise.all(
    keys.filter((k) => k.startsWith('ticketing-validator-') && k !== CACHE).map((k) => caches.delete(k)))));
  self.clients.claim();
});

self.addEventListener('message', (event) => {
  if (event.data === 'skip-waiting') self.skipWaiting();
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin) return;
  if (url.pathname.endsWith('/manifest.json')) {
    // The cluster's manifest: the network first (it may have been extended), the cache offline;
    // only a good answer replaces the cached copy.
    event.respondWith(fetch(event.request).then((r) => {
      if (r.ok) {
        const copy = r.clone();
        caches.open(CACHE).then((c) => c.put(event.request, copy));
      }
      return r;
    }).catch(() => caches.match(event.request).then(withoutDate)));
    return;
  }
  event.respondWith(caches.match(event.request, { ignoreSearch: true })
    .then((hit) => (hit ? withoutDate(hit) : fetch(event.request))));
});

// A cached copy without its Date: the apps take the cluster's clock from that header, and an
// old copy's would set them back by its age.
function withoutDate(hit) {
  if (!hit) return hit;
  const headers = new Headers(hit.headers);
  headers.delete('date');
  return new Response(hit.body, { status: hit.status, statusText: hit.statusText, headers });
}
