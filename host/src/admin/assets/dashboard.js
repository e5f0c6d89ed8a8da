// sockgate's dashboard: draws the live charts of every
// <section data-live="/live/..."> with uPlot (vendored beside this file).
// The server sends a `snapshot` event (the last hour, as columns) when the
// stream opens, then a `sample` event per new point; the stream ends after
// a minute and EventSource reconnects by itself (a fresh snapshot).
// Each series' latest value, hour total and point count are kept in the
// `data-last`, `data-total` and `data-points` attributes of its
// [data-stat] cell, which the end-to-end test reads.
(function () {
  "use strict";

  var KEEP = 720; // points: an hour at one every 5 s (admin/timeline.rs)
  var COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
  // Series that are a level at the sample, not an amount per step.
  var LEVELS = { connections: true, cpu_percent: true, rss_mib: true };

  function format(value) {
    if (value >= 1e9) return (value / 1e9).toFixed(2) + " G";
    if (value >= 1e6) return (value / 1e6).toFixed(2) + " M";
    if (value >= 1e4) return (value / 1e3).toFixed(1) + " k";
    return String(Math.round(value * 100) / 100);
  }

  function live(section) {
    var state = section.querySelector(".live-state");
    var charts = [];
    var data = null;

    section.querySelectorAll(".chart").forEach(function (element) {
      var names = element.dataset.series.split(" ");
      var options = {
        title: element.dataset.title,
        width: Math.max(320, element.clientWidth || 560),
        height: 200,
        scales: { x: { time: true } },
        series: [{}].concat(
          names.map(function (name, i) {
            return { label: name, stroke: COLOURS[i % COLOURS.length], width: 1.5 };
          })
        ),
        axes: [{}, { size: 70 }],
      };
      var empty = [[]].concat(names.map(function () { return []; }));
      charts.push({ names: names, plot: new uPlot(options, empty, element) });
    });

    function draw() {
      var times = data.times;
      var newest = times.length ? times[times.length - 1] : Date.now() / 1000;
      charts.forEach(function (chart) {
        chart.plot.setData(
          [times].concat(
            chart.names.map(function (name) { return data[name] || []; })
          )
        );
        // At least the last 5 minutes, growing to the hour kept, so that
        // a few points are not spread over an automatic range of years.
        chart.plot.setScale("x", {
          min: Math.min(times.length ? times[0] : newest, newest - 300),
          max: newest,
        });
      });
      section.querySelectorAll("[data-stat]").forEach(function (cell) {
        var name = cell.dataset.stat;
        var column = data[name] || [];
        var total = 0;
        var peak = 0;
        column.forEach(function (value) {
          total += value;
          peak = Math.max(peak, value);
        });
        var last = column.length ? column[column.length - 1] : 0;
        cell.dataset.points = String(column.length);
        cell.dataset.last = String(last);
        cell.dataset.total = String(total);
        cell.textContent = LEVELS[name]
          ? "now " + format(last) + ", peak " + format(peak)
          : "last step " + format(last) + ", last hour " + format(total);
      });
      state.textContent = times.length
        ? "Live: " + times.length + " point(s); the newest at " +
          new Date(times[times.length - 1] * 1000).toLocaleTimeString() + "."
        : "Live: waiting for the first sample (one every 5 s).";
      section.dataset.points = String(times.length);
    }

    var source = new EventSource(section.dataset.live);
    source.addEventListener("snapshot", function (event) {
      data = JSON.parse(event.data);
      draw();
    });
    source.addEventListener("sample", function (event) {
      if (!data) return;
      var point = JSON.parse(event.data);
      Object.keys(point).forEach(function (name) {
        var column = data[name] || (data[name] = []);
        column.push(point[name][0]);
        if (column.length > KEEP) column.shift();
      });
      draw();
    });
    source.addEventListener("gone", function () {
      source.close();
      state.textContent = "The app was removed.";
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        state.textContent = "Disconnected: reload the page (logged out?).";
      }
    };
  }

  function start() {
    document.querySelectorAll("section[data-live]").forEach(live);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
