/* Passkeys (WebAuthn) on the account pages.
 *
 * A form with data-options, data-complete and data-next is hidden by the page and shown
 * here when the browser has WebAuthn. On submit: POST data-options (JSON options from the
 * server), navigator.credentials.create() or .get(), POST the credential to data-complete,
 * then go to data-next. Every POST carries the form's CSRF token in X-CSRF-Token. Errors are
 * shown, in French, in the form's role="alert" paragraph. No inline script (CSP).
 */
"use strict";

(() => {
  if (!window.PublicKeyCredential || !navigator.credentials) {
    return;
  }

  const MESSAGES = {
    cancelled: "La demande a été annulée ou a expiré. Réessayez.",
    known: "Cette clé d'accès est déjà enregistrée pour votre compte.",
    unavailable: "Les clés d'accès ne sont pas disponibles à cette adresse.",
    failed: "La clé d'accès n'a pas pu être utilisée. Réessayez.",
    network: "Le serveur n'a pas pu être joint. Vérifiez votre connexion, puis réessayez.",
  };
  const SHOWN_PROBLEMS = new Set([401, 403, 409, 429]);

  const toBytes = (text) => {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    return Uint8Array.from(atob(padded), (char) => char.charCodeAt(0));
  };

  const toText = (buffer) => {
    let binary = "";
    for (const byte of new Uint8Array(buffer)) {
      binary += String.fromCharCode(byte);
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  };

  const descriptors = (list) => (list || []).map((item) => ({ ...item, id: toBytes(item.id) }));

  const creationOptions = (json) => ({
    ...json,
    challenge: toBytes(json.challenge),
    user: { ...json.user, id: toBytes(json.user.id) },
    excludeCredentials: descriptors(json.excludeCredentials),
  });

  const requestOptions = (json) => ({
    ...json,
    challenge: toBytes(json.challenge),
    allowCredentials: descriptors(json.allowCredentials),
  });

  const credentialJson = (credential) => {
    const answer = credential.response;
    const response = { clientDataJSON: toText(answer.clientDataJSON) };
    if (answer.attestationObject) {
      response.attestationObject = toText(answer.attestationObject);
      response.transports =
        typeof answer.getTransports === "function" ? answer.getTransports() : [];
    } else {
      response.authenticatorData = toText(answer.authenticatorData);
      response.signature = toText(answer.signature);
      if (answer.userHandle) {
        response.userHandle = toText(answer.userHandle);
      }
    }
    return {
      id: credential.id,
      rawId: toText(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      response,
    };
  };

  class Refusal extends Error {}

  const post = async (url, csrf, body) => {
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
    } catch {
      throw new Refusal(MESSAGES.network);
    }
    const data = await response.json().catch(() => null);
    if (!response.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : "";
      const shown =
        SHOWN_PROBLEMS.has(response.status) ||
        (response.status === 422 && data && String(data.type).endsWith("/invalid-input"));
      throw new Refusal(shown && detail ? detail : MESSAGES.failed);
    }
    return data;
  };

  const explain = (error) => {
    if (error instanceof Refusal) {
      return error.message;
    }
    switch (error && error.name) {
      case "NotAllowedError":
      case "AbortError":
        return MESSAGES.cancelled;
      case "InvalidStateError":
        return MESSAGES.known;
      case "SecurityError":
        return MESSAGES.unavailable;
      default:
        return MESSAGES.failed;
    }
  };

  const ceremonies = {
    "cle-acces-ajout": async (form, csrf) => {
      const options = await post(form.dataset.options, csrf, {});
      const credential = await navigator.credentials.create({
        publicKey: creationOptions(options),
      });
      const label = form.querySelector('input[name="label"]');
      const body = { credential: credentialJson(credential), label: label ? label.value : null };
      // The code that proves the mailbox, when a first-login enrolment asks for one.
      const emailCode = form.querySelector('input[name="email_code"]');
      if (emailCode) {
        body.email_code = emailCode.value;
      }
      await post(form.dataset.complete, csrf, body);
    },
    "cle-acces-connexion": async (form, csrf) => {
      const options = await post(form.dataset.options, csrf, {});
      const credential = await navigator.credentials.get({ publicKey: requestOptions(options) });
      await post(form.dataset.complete, csrf, { credential: credentialJson(credential) });
    },
  };

  const enhance = (form) => {
    const ceremony = ceremonies[form.id];
    if (!ceremony || form.dataset.ready) {
      return;
    }
    form.dataset.ready = "true";
    const button = form.querySelector('button[type="submit"]');
    const alert = form.querySelector('[role="alert"]');
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const csrf = form.querySelector('input[name="csrf_token"]').value;
      button.disabled = true;
      alert.hidden = true;
      alert.textContent = "";
      try {
        await ceremony(form, csrf);
        window.location.assign(form.dataset.next);
      } catch (error) {
        alert.textContent = explain(error);
        alert.hidden = false;
        button.disabled = false;
      }
    });
    form.hidden = false;
  };

  const start = () => {
    for (const form of document.querySelectorAll("form[data-options][data-complete]")) {
      enhance(form);
    }
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
