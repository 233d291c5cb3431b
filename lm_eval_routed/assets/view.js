// Filters and sorting of the routing view: every card carries what they need in data- attributes.
(function () {
  const list = document.getElementById("cards");
  const cards = Array.from(list.querySelectorAll(".card"));
  const controls = ["filter", "sort", "task", "search"].map((id) => document.getElementById(id));
  const [filter, sort, task, search] = controls;
  const count = document.getElementById("count");

  function keep(card) {
    const d = card.dataset;
    if (task.value && d.task !== task.value) return false;
    if (search.value && !card.textContent.toLowerCase().includes(search.value.toLowerCase())) return false;
    switch (filter.value) {
      case "right": return d.score === "1";
      case "wrong": return d.score === "0";
      case "partial": return d.score !== "" && d.score !== "0" && d.score !== "1";
      case "flipped": return d.flip !== "";
      case "lost": case "gained": return d.flip === filter.value;
      default: return true;
    }
  }

  function value(card, key) {
    const v = parseFloat(card.dataset[key]);
    return Number.isNaN(v) ? -Infinity : v;
  }

  function order(a, b) {
    const [key, dir] = sort.value.split(":");
    if (key === "order") return value(a, "order") - value(b, "order");
    return dir === "desc" ? value(b, key) - value(a, key) : value(a, key) - value(b, key);
  }

  function apply() {
    const shown = cards.filter(keep).sort(order);
    cards.forEach((c) => { c.hidden = true; });
    shown.forEach((c) => { c.hidden = false; list.appendChild(c); });
    count.textContent = shown.length + " of " + cards.length + " documents";
  }

  controls.forEach((c) => c.addEventListener("input", apply));
  apply();
})();
