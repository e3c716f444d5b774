// The receipt: case number and PIN shown once, with copy and save buttons. The text file is
// made here, in the browser; nothing about it is sent anywhere.

const strings = document.getElementById('strings').dataset;
const result = document.getElementById('result');
const copyStatus = document.getElementById('copy-status');
let saved = false;
let guarding = false;

function say(text) {
  copyStatus.textContent = '';
  // A fresh text node each time, so a repeated message is announced again.
  window.setTimeout(() => { copyStatus.textContent = text; }, 50);
}

function valueOf(id) {
  return document.getElementById(id).textContent.trim();
}

function selectText(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

async function copy(id) {
  const element = document.getElementById(id);
  try {
    await navigator.clipboard.writeText(valueOf(id));
    say(strings.copied);
  } catch {
    selectText(element);
    say(strings.copyFailed);
  }
}

function saveFile() {
  const lines = [
    strings.fileTitle, '',
    `${strings.fileCase}: ${valueOf('case-number')}`,
    `${strings.filePin}: ${valueOf('case-pin')}`,
    `${strings.fileWhere}: ${strings.caseUrl}`, '',
    strings.fileNote, '',
  ];
  const blob = new Blob(['\ufeff' + lines.join('\r\n')], { type: 'text/plain;charset=utf-8' });
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = strings.fileName;
  document.body.append(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 10000);
  saved = true;
  say(strings.saved);
}

// Until the numbers are copied or saved, leaving through a link asks first (never the quick
// exit: that must always leave at once).
function guardLeaving() {
  if (guarding) return;
  guarding = true;
  document.addEventListener('click', (event) => {
    const link = event.target.closest('[data-leave]');
    if (!link || saved || !guarding) return;
    if (!window.confirm(strings.leave)) event.preventDefault();
  });
  document.addEventListener('quickexit', () => { guarding = false; });
}

function wire() {
  const copied = new Set();
  for (const button of result.querySelectorAll('[data-copy]')) {
    button.hidden = false;
    button.addEventListener('click', async () => {
      await copy(button.dataset.copy);
      copied.add(button.dataset.copy);
      if (copied.size === 2) saved = true;
    });
  }
  const save = document.getElementById('save-file');
  save.hidden = false;
  save.addEventListener('click', saveFile);
  guardLeaving();
}

export function showReceipt(number, pin) {
  document.getElementById('case-number').textContent = number;
  document.getElementById('case-pin').textContent = pin;
  document.getElementById('result-case').value = number;
  document.getElementById('result-pin').value = pin;
  result.hidden = false;
  wire();
  document.getElementById('result-title').focus();
}

// The page the server rendered after a no-JavaScript upload already shows the receipt.
if (!result.hidden) wire();
