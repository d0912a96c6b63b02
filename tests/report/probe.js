// Put first into <head> of a copy of the page by tests/report/browser.py: records what the page did
// (errors, console.error, CSP violations, alert calls) and, after load, what it shows, as JSON in the DOM.
(function () {
  var errors = [], violations = [], alerts = 0;
  window.addEventListener("error", function (e) { errors.push(String(e.message || (e.target && e.target.outerHTML) || e)); }, true);
  var ce = console.error;
  console.error = function () { errors.push(Array.prototype.join.call(arguments, " ")); ce.apply(console, arguments); };
  document.addEventListener("securitypolicyviolation", function (e) { violations.push(e.violatedDirective + " " + e.blockedURI); });
  window.alert = function () { alerts += 1; };
  window.addEventListener("load", function () { setTimeout(function () {
    var out = {
      images: Array.prototype.map.call(document.images, function (i) { return {alt: i.alt, natural_width: i.naturalWidth, complete: i.complete, src: i.getAttribute("src").slice(0, 24)}; }),
      figures: Array.prototype.map.call(document.querySelectorAll("svg.figure, #sensitivity > svg"), function (s) { var r = s.getBoundingClientRect(); return {width: r.width, height: r.height, children: s.childElementCount}; }),
      keys: {}, resources: performance.getEntriesByType("resource").map(function (r) { return r.name; }),
      errors: errors, violations: violations, alerts: alerts, text: document.body.innerText,
      imgs_with_src_x: document.querySelectorAll('img[src="x"]').length
    };
    // a sortable table: click its first header twice and record the first column after each click
    var th = document.querySelector("table.sortable th.sortable");
    if (th) {
      var table = th.closest("table"), firstColumn = function () {
        return Array.prototype.slice.call(table.rows, 1).map(function (r) { return r.cells[0].textContent; }); };
      th.click(); out.sorted_up = firstColumn(); th.click(); out.sorted_down = firstColumn();
    }
    document.querySelectorAll("[data-key]").forEach(function (e) { (out.keys[e.dataset.key] = out.keys[e.dataset.key] || []).push(e.textContent.trim()); });
    var pre = document.createElement("pre"); pre.id = "edgepack-probe"; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 0); });
})();
