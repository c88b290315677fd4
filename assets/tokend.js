// tokend's landing page script. Everything works without it; it adds the live countdown of
// "Authorization expires", live updates (server-sent events: the live part of the page is
// fetched again and swapped in), and the Table/Grid toggle, remembered in localStorage (the
// only thing this page stores in the browser).
'use strict';
(function () {
  var KEY = 'tokend.view';
  var loadedAt = Date.now();

  function human(secs) {
    if (secs <= 0) return 'expired';
    var d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600),
      m = Math.floor(secs % 3600 / 60), s = secs % 60;
    var two = function (n) { return (n < 10 ? '0' : '') + n; };
    if (secs < 60) return s + 's';
    if (secs < 3600) return m + 'm ' + two(s) + 's';
    if (secs < 86400) return h + 'h ' + two(m) + 'm';
    return d + 'd ' + two(h) + 'h';
  }

  function tick() {
    var elapsed = Math.floor((Date.now() - loadedAt) / 1000);
    document.querySelectorAll('[data-expires-in]').forEach(function (el) {
      var raw = el.getAttribute('data-expires-in');
      if (raw === '') { el.textContent = ''; return; }
      el.textContent = human(parseInt(raw, 10) - elapsed);
    });
  }

  function applyView(view) {
    var table = document.getElementById('apps-table'), grid = document.getElementById('apps-grid');
    if (table) table.hidden = view === 'grid';
    if (grid) grid.hidden = view !== 'grid';
    document.querySelectorAll('#view-toggle button[data-view]').forEach(function (b) {
      b.setAttribute('aria-pressed', String(b.getAttribute('data-view') === view));
    });
  }

  function currentView() {
    try { return localStorage.getItem(KEY) || null; } catch (e) { return null; }
  }

  function setupToggle() {
    var form = document.getElementById('view-toggle');
    if (!form) return;
    form.querySelectorAll('button[data-view]').forEach(function (b) {
      b.addEventListener('click', function (ev) {
        ev.preventDefault();
        var view = b.getAttribute('data-view');
        try { localStorage.setItem(KEY, view); } catch (e) { /* private mode: not remembered */ }
        applyView(view);
      });
    });
    var saved = currentView();
    if (saved) applyView(saved);
  }

  function presetInfo() {
    var select = document.getElementById('f-provider');
    if (!select) return;
    var show = function () {
      document.querySelectorAll('tr[data-preset]').forEach(function (row) {
        row.classList.toggle('chosen', row.getAttribute('data-preset') === select.value);
      });
      var details = document.getElementById('preset-info');
      if (details && select.value !== 'custom') details.open = true;
    };
    select.addEventListener('change', show);
    show();
  }

  function live() {
    var box = document.getElementById('live');
    if (!box || !window.EventSource) return;
    var url = box.getAttribute('data-live');
    var pending = null;
    var refresh = function () {
      pending = null;
      fetch(url, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } }).then(function (r) {
        if (r.redirected || r.status === 401) { window.location.reload(); return null; }
        if (r.status === 404) { window.location.href = '/'; return null; }
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (html === null || html === undefined) return;
        box.innerHTML = html;
        loadedAt = Date.now();
        applyView(currentView() || (box.getAttribute('data-grid') === 'true' ? 'grid' : 'table'));
        tick();
      }).catch(function () { /* the next event tries again */ });
    };
    var source = new EventSource('/events');
    source.addEventListener('profile', function () {
      if (!pending) pending = setTimeout(refresh, 150);
    });
    source.addEventListener('error', function () {
      // Closed for good (signed out, session expired, caller removed): show the sign-in page.
      if (source.readyState === EventSource.CLOSED) window.location.reload();
    });
  }

  document.addEventListener('DOMContentLoaded', function () {
    setupToggle();
    presetInfo();
    tick();
    setInterval(tick, 1000);
    live();
  });
})();
