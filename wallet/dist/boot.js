// Shared by the wallet and validator PWAs; scripts/wasm fills in ticketing_wallet for each.
// Starts the wasm app and the service worker. The app shell is served from the service
// worker's cache offline; a new deployment installs a new worker, which waits until the
// passenger accepts the update (the app shows "Update now").
import init from './ticketing_wallet.js';

init();

if ('serviceWorker' in navigator) {
  // Reload only for an update the user accepted: the first install also changes the
  // controller (clients.claim), and a reload then would cut into whatever the page is doing.
  let accepted = false;
  let reloading = false;
  navigator.serviceWorker.addEventListener('controllerchange', () => {
    if (accepted && !reloading) {
      reloading = true;
      location.reload();
    }
  });
  navigator.serviceWorker.register('sw.js').then((reg) => {
    const ready = () => window.dispatchEvent(new Event('ticketing-update-ready'));
    if (reg.waiting && navigator.serviceWorker.controller) ready();
    reg.addEventListener('updatefound', () => {
      const worker = reg.installing;
      if (!worker) return;
      worker.addEventListener('statechange', () => {
        if (worker.state === 'installed' && navigator.serviceWorker.controller) ready();
      });
    });
    window.addEventListener('ticketing-apply-update', () => {
      if (reg.waiting) {
        accepted = true;
        reg.waiting.postMessage('skip-waiting');
      }
    });
    // Look for a new version whenever the app comes back to the foreground.
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') reg.update().catch(() => {});
    });
  }).catch(() => {});
}
