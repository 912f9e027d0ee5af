// The console's entry point: pages by the address's fragment (#chat, #usage, #operator, never a
// secret), and signing in and out with an API key or the operator token.

import { credentials, keyHint, verifyAdminToken, verifyApiKey } from "./api.js";
import { clearChat, initChat, loadModels } from "./chat.js";
import { $, showAlert } from "./dom.js";
import { clearOperator, initOperator, loadOperator } from "./operator.js";
import { initUsage, loadUsage } from "./usage.js";

const PAGES = ["chat", "usage", "operator"];

function currentPage() {
  const name = location.hash.slice(1);
  return PAGES.includes(name) ? name : "chat";
}

function identity() {
  const key = credentials.apiKey;
  $("identity-key").hidden = !key;
  $("identity-key").textContent = key ? `API key ${keyHint(key)}` : "";
  $("sign-out-key").hidden = !key;
  $("identity-admin").hidden = !credentials.adminToken;
  $("sign-out-admin").hidden = !credentials.adminToken;
}

/** Shows the page of the address, or the sign-in it needs first, and loads its data. */
function route() {
  const page = currentPage();
  for (const link of document.querySelectorAll(".tabs a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const needsKey = page !== "operator";
  const signedIn = needsKey ? Boolean(credentials.apiKey) : Boolean(credentials.adminToken);
  $("key-sign-in").hidden = !(needsKey && !signedIn);
  $("admin-sign-in").hidden = !(!needsKey && !signedIn);
  for (const name of PAGES) $(`page-${name}`).hidden = !(name === page && signedIn);
  identity();
  if (!signedIn) {
    (needsKey ? $("key-input") : $("admin-input")).focus();
    return;
  }
  if (page === "chat") {
    loadModels();
    $("chat-input").focus();
  } else if (page === "usage") loadUsage();
  else loadOperator();
}

function signInForm(formId, inputId, errorId, verify, keep) {
  const form = $(formId);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $(inputId);
    const secret = input.value.trim();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    showAlert($(errorId), "");
    try {
      await verify(secret);
      input.value = "";
      keep(secret);
      route();
    } catch (err) {
      showAlert($(errorId), err.message);
    } finally {
      button.disabled = false;
    }
  });
}

function useKey(secret) {
  credentials.apiKey = secret;
  clearChat();
  location.hash = "#chat";
  route();
}

function start() {
  initChat();
  initUsage();
  initOperator({ useKey });
  signInForm("key-form", "key-input", "key-error", verifyApiKey, (s) => {
    credentials.apiKey = s;
  });
  signInForm("admin-form", "admin-input", "admin-error", verifyAdminToken, (s) => {
    credentials.adminToken = s;
  });
  $("sign-out-key").addEventListener("click", () => {
    credentials.apiKey = "";
    clearChat();
    if (currentPage() === "operator") identity();
    else route();
  });
  $("sign-out-admin").addEventListener("click", () => {
    credentials.adminToken = "";
    clearOperator();
    if (currentPage() === "operator") route();
    else identity();
  });
  window.addEventListener("hashchange", route);
  route();
}

start();
