// <otaudit-viewer>: the embeddable viewer (embed.html) as a custom element for a product's page.
//
//   <script src="(the collector's origin)/ui/otaudit-viewer.js"></script>
//   <otaudit-viewer token-url="/audit-token" lang="fr" columns="time,actor,event,outcome"></otaudit-viewer>
//
// It frames embed.html of the collector this script came from (or of its `origin` attribute),
// passing its attributes as the iframe's URL parameters, and answers the viewer's otaudit:ready
// and otaudit:expired messages with a token: POSTed for at `token-url` (the product's own
// backend, same-origin, answering {"token": ...}) or handed over with element.setToken(token)
// when the "otaudit-token-needed" event asks for one. It dispatches "otaudit-refused" with the
// viewer's message. The token goes in no URL and in no attribute.
"use strict";

(() => {
  if (window.customElements.get("otaudit-viewer")) return;
  const script = document.currentScript;
  const HOME = script && script.src ? new URL(script.src).origin : window.location.origin;
  const PARAMETERS = ["tenant", "lang", "columns", "utc", "accent", "accent_text", "text", "muted", "background", "surface",
    "border", "font", "density"];

  class OtauditViewer extends HTMLElement {
    constructor() {
      super();
      this.onMessage = this.onMessage.bind(this);
      this.frame = null;
    }

    get collector() {
      const given = this.getAttribute("origin");
      return given ? new URL(given).origin : HOME;
    }

    connectedCallback() {
      if (this.frame) return;
      const url = new URL("/ui/embed.html", this.collector);
      for (const name of PARAMETERS) {
        const value = this.getAttribute(name);
        if (value !== null) url.searchParams.set(name, value);
      }
      const frame = document.createElement("iframe");
      frame.title = this.getAttribute("title") || "Audit log";
      frame.src = url.href;
      frame.setAttribute("referrerpolicy", "no-referrer");
      frame.style.width = "100%";
      frame.style.height = this.getAttribute("height") || "800px";
      frame.style.border = "0";
      window.addEventListener("message", this.onMessage);
      this.frame = frame;
      this.append(frame);
    }

    disconnectedCallback() {
      window.removeEventListener("message", this.onMessage);
      if (this.frame) this.frame.remove();
      this.frame = null;
    }

    onMessage(event) {
      if (!this.frame || event.source !== this.frame.contentWindow || event.origin !== this.collector) return;
      const data = event.data;
      if (!data || typeof data !== "object") return;
      if (data.type === "otaudit:ready" || data.type === "otaudit:expired") this.renew(data.type);
      else if (data.type === "otaudit:refused") {
        this.dispatchEvent(new CustomEvent("otaudit-refused", { detail: { error: data.error, message: data.message } }));
      }
    }

    async renew(why) {
      const tokenUrl = this.getAttribute("token-url");
      if (!tokenUrl) {
        this.dispatchEvent(new CustomEvent("otaudit-token-needed", { detail: { reason: why } }));
        return;
      }
      const answer = await fetch(tokenUrl, { method: "POST", credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!answer.ok) {
        this.dispatchEvent(new CustomEvent("otaudit-token-failed", { detail: { status: answer.status } }));
        return;
      }
      const { token } = await answer.json();
      this.setToken(token);
    }

    setToken(token) {
      if (this.frame) this.frame.contentWindow.postMessage({ type: "otaudit:token", token }, this.collector);
    }

    setTheme(theme) {
      if (this.frame) this.frame.contentWindow.postMessage({ ...theme, type: "otaudit:theme" }, this.collector);
    }
  }

  window.customElements.define("otaudit-viewer", OtauditViewer);
})();
