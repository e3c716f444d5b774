// The case form: an optional "show PIN" switch (the field stays a password field otherwise,
// so password managers fill it).

const box = document.getElementById('show-pin-box');
const toggle = document.getElementById('show-pin');
const pin = document.getElementById('pin');

if (box && toggle && pin) {
  box.hidden = false;
  toggle.addEventListener('change', () => {
    pin.type = toggle.checked ? 'text' : 'password';
  });
}
