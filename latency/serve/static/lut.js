// lut serve: the one script, shipped in the wheel. A page whose <main> says data-refresh-s reloads its
// content in place every so many seconds (the farm page), without a full page load.
"use strict";
// A conditions form leaves out the fields left empty, so that each takes its default.
document.addEventListener("submit", function (event) {
  for (const field of event.target.elements) {
    if (field.name && field.value === "") field.disabled = true;
  }
});
(function () {
  const main = document.querySelector("main[data-refresh-s]");
  if (!main) return;
  const seconds = Number(main.dataset.refreshS) || 5;
  async function refresh() {
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.querySelector("main");
      if (fresh) main.innerHTML = fresh.innerHTML;
      main.dataset.refreshedAt = new Date().toISOString();
    } catch (error) {
      main.dataset.refreshError = String(error);
    }
  }
  window.setInterval(refresh, seconds * 1000);
})();
