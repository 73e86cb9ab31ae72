// The invitation link carries its token in the fragment (after "#"), which the browser never
// sends to the server: move it into the form, then out of the address bar and the history.
(function () {
  "use strict";
  var field = document.getElementById("token");
  if (!field) {
    return;
  }
  var token = window.location.hash.slice(1);
  if (token) {
    field.value = token;
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  var wrapper = document.getElementById("champ-token");
  if (wrapper && field.value && field.getAttribute("aria-invalid") !== "true") {
    wrapper.hidden = true;
    var password = document.getElementById("password");
    if (password && !document.querySelector("[autofocus]")) {
      password.focus();
    }
  }
})();
