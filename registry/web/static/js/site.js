// Every page: the quick exit, and focus on an error shown after a form was sent.

const exit = document.getElementById('quick-exit');

// Leave at once for a neutral site. location.replace keeps this page out of the back history;
// the page is emptied first so nothing lingers on screen while the other site loads.
function leave() {
  const target = exit.href;
  document.dispatchEvent(new Event('quickexit'));
  document.title = '';
  document.body.replaceChildren();
  window.location.replace(target);
}

if (exit) {
  exit.addEventListener('click', (event) => {
    event.preventDefault();
    leave();
  });
  // Esc pressed twice within a second leaves too (the footer says so).
  let lastEscape = 0;
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Escape') return;
    const now = Date.now();
    if (now - lastEscape < 1000) leave();
    lastEscape = now;
  });
}

const alert = document.querySelector('.alert[role="alert"]:not([hidden])');
if (alert) alert.focus();
