(function () {
  var root = document.documentElement;
  window.addEventListener('error', function (e) { root.setAttribute('data-js-error', String(e.message || e)); });
  // a cell's sort key: its data-v number ('' = missing, always last), else its text
  function val(row, i) {
    var c = row.cells[i];
    if (!c) return null;
    var v = c.getAttribute('data-v');
    if (v === null) return c.textContent.trim().toLowerCase();
    if (v === '') return null;
    var f = parseFloat(v);
    return isNaN(f) ? null : f;
  }
  function sortBy(th) {
    var table = th.closest('table'), tb = table.tBodies[0];
    var i = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var desc = th.getAttribute('aria-sort') !== 'descending';  // first click: best (largest) first
    var rows = Array.prototype.slice.call(tb.rows);
    rows.sort(function (a, b) {
      var x = val(a, i), y = val(b, i);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      if (x < y) return desc ? 1 : -1;
      if (x > y) return desc ? -1 : 1;
      return 0;
    });
    rows.forEach(function (r) { tb.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', desc ? 'descending' : 'ascending');
  }
  // #selftest: sort the first metric column and record whether the rows came out in order
  function selftest() {
    var th = document.querySelector('table.sortable thead th[data-metric]');
    if (!th) { root.setAttribute('data-selftest', 'no-metric-column'); return; }
    th.click();
    var t = th.closest('table'), i = Array.prototype.indexOf.call(th.parentNode.cells, th);
    var ok = true, prev = Infinity, seenNull = false;
    Array.prototype.forEach.call(t.tBodies[0].rows, function (r) {
      var v = val(r, i);
      if (v === null) { seenNull = true; return; }
      if (seenNull || v > prev) ok = false;
      prev = v;
    });
    root.setAttribute('data-selftest', (ok ? 'ok' : 'unsorted') + ':' + th.getAttribute('data-metric'));
  }
  try {
    var ths = document.querySelectorAll('table.sortable thead th');
    Array.prototype.forEach.call(ths, function (th) {
      th.addEventListener('click', function () { sortBy(th); });
      th.title = 'click to sort';
    });
    root.setAttribute('data-sortable-ready', String(document.querySelectorAll('table.sortable').length));
    if (location.hash === '#selftest') selftest();
  } catch (e) {
    root.setAttribute('data-js-error', String(e));
  }
})();
