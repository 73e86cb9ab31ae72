// The page of the emailed password-reset link (/compte/mot-de-passe/nouveau#<code>).
//
// The code is in the link's fragment, which the browser sends neither to the server nor in
// a Referer header. This script moves it into the form's "token" field, then removes it
// from the address bar and from this history entry, and hides the field, which is left in
// view for pasting the code by hand when there is no fragment (or no JavaScript) or when
// the server said the code is wrong.
(function () {
  "use strict";

  // "<selector>.<verifier>"; any other fragment (the skip link's "#contenu") is not one.
  var CODE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

  function takeCode() {
    var field = document.getElementById("token");
    var wrapper = document.getElementById("champ-code");
    if (!field || !wrapper) {
      return;
    }
    var code = window.location.hash.slice(1).trim();
    if (CODE.test(code)) {
      field.value = code;
      wrapper.setAttribute("data-keep", "false");
      window.history.replaceState(
        window.history.state,
        "",
        window.location.pathname + window.location.search
      );
    }
    if (field.value && wrapper.getAttribute("data-keep") !== "true") {
      wrapper.hidden = true;
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", takeCode);
  } else {
    takeCode();
  }
  // A link opened in a tab that already shows this page only changes the fragment.
  window.addEventListener("hashchange", takeCode);
})();
