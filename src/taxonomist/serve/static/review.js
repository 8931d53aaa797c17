// Review page: keyboard-first accept/correct of predictions. Plain JS, no build step.
"use strict";

const PAGE = 50;
const $ = (id) => document.getElementById(id);
const state = { items: [], total: 0, offset: 0, current: -1, meta: null };

async function api(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(typeof body.detail === "string" ? body.detail : `${response.status} ${response.statusText}`);
  }
  return response.json();
}

function option(select, value) {
  const el = document.createElement("option");
  el.value = el.textContent = value;
  select.append(el);
}

function filters() {
  const params = new URLSearchParams({ status: $("status").value, limit: PAGE });
  if ($("category").value) params.set("category", $("category").value);
  if ($("attribute").value) params.set("attribute", $("attribute").value);
  if ($("below-on").checked && $("below").value !== "") params.set("below", $("below").value);
  return params;
}

async function load(offset, select) {
  const params = filters();
  params.set("offset", offset);
  const page = await api(`api/predictions?${params}`);
  Object.assign(state, { items: page.items, total: page.total, offset: page.offset });
  renderList();
  show(Math.min(select === "last" ? state.items.length - 1 : 0, state.items.length - 1));
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
}

function renderRow(row, item) {
  row.replaceChildren();
  row.className = item.decision ? item.decision.action : "";
  cell(row, item.id);
  cell(row, item.category);
  cell(row, item.attribute);
  cell(row, item.value ?? "—");
  cell(row, item.confidence.toFixed(3));
  cell(row, item.decision ? `${item.decision.action}: ${item.decision.value}` : "");
}

function renderList() {
  const body = $("rows");
  body.replaceChildren();
  state.items.forEach((item, k) => {
    const row = document.createElement("tr");
    row.dataset.index = k;
    renderRow(row, item);
    row.addEventListener("click", () => show(k));
    body.append(row);
  });
  const end = state.offset + state.items.length;
  $("count").textContent = state.total
    ? `${state.offset + 1}–${end} of ${state.total} predictions`
    : "No predictions match the filters.";
}

function show(k) {
  state.current = k;
  $("error").textContent = "";
  document.querySelectorAll("#rows tr").forEach((row) => row.classList.toggle("current", Number(row.dataset.index) === k));
  const item = state.items[k];
  $("detail").hidden = !item;
  if (!item) return;
  document.querySelector(`#rows tr[data-index="${k}"]`).scrollIntoView({ block: "nearest" });
  if (state.meta.images) $("image").src = `api/image?id=${encodeURIComponent(item.id)}`;
  $("image").hidden = !state.meta.images;
  $("title").textContent = `${item.id} · ${item.category} · ${item.attribute}`;
  $("predicted").textContent = item.value ?? "—";
  $("confidence").textContent = item.confidence.toFixed(3);
  $("decision").textContent = item.decision ? `${item.decision.action}: ${item.decision.value}` : "none";
  const choices = $("choices");
  choices.replaceChildren();
  $("typed-options").replaceChildren();
  item.allowed.forEach((value, n) => {
    const li = document.createElement("li");
    li.textContent = n < 9 ? `[${n + 1}] ${value}` : value;
    li.classList.toggle("predicted", value === item.value);
    li.classList.toggle("chosen", item.decision?.value === value);
    li.addEventListener("click", () => decide(value));
    choices.append(li);
    option($("typed-options"), value);
  });
  $("typed").value = "";
}

async function move(step) {
  const next = state.current + step;
  if (next >= 0 && next < state.items.length) return show(next);
  if (step > 0 && state.offset + state.items.length < state.total) return load(state.offset + PAGE, "first");
  if (step < 0 && state.offset > 0) return load(Math.max(0, state.offset - PAGE), "last");
}

// value undefined = accept the prediction.
async function decide(value) {
  const item = state.items[state.current];
  if (!item) return;
  try {
    const saved = await api("api/decisions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: item.id, attribute: item.attribute, value }),
    });
    if (!item.decision) state.meta.reviewed += 1;
    state.items[state.current] = saved;
    renderRow(document.querySelector(`#rows tr[data-index="${state.current}"]`), saved);
    showProgress();
    await move(1);
  } catch (err) {
    fail(err);
  }
}

function showProgress() {
  $("progress").textContent = `${state.meta.reviewed} / ${state.meta.predictions} reviewed`;
}

function typedValue() {
  const text = $("typed").value.trim().toLowerCase();
  const allowed = state.items[state.current]?.allowed ?? [];
  const prefixed = allowed.filter((v) => v.toLowerCase().startsWith(text));
  return allowed.find((v) => v.toLowerCase() === text) ?? (prefixed.length === 1 ? prefixed[0] : undefined);
}

$("typed").addEventListener("keydown", (event) => {
  if (event.key === "Escape") $("typed").blur();
  if (event.key !== "Enter") return;
  event.preventDefault();
  const value = typedValue();
  if (value === undefined) {
    $("error").textContent = `"${$("typed").value}" is not one allowed value`;
    return;
  }
  $("typed").blur();
  decide(value);
});

document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select") || event.ctrlKey || event.metaKey || event.altKey) return;
  const item = state.items[state.current];
  if (event.key === "j" || event.key === "ArrowDown") move(1);
  else if (event.key === "k" || event.key === "ArrowUp") move(-1);
  else if (event.key === "a") decide(undefined);
  else if (/^[1-9]$/.test(event.key) && item && Number(event.key) <= item.allowed.length) decide(item.allowed[Number(event.key) - 1]);
  else if (event.key === "/") $("typed").focus();
  else return;
  event.preventDefault();
});

async function start() {
  state.meta = await api("api/meta");
  Object.keys(state.meta.categories).forEach((c) => option($("category"), c));
  state.meta.attributes.forEach((a) => option($("attribute"), a));
  $("below").value = state.meta.threshold;
  showProgress();
  // Focus leaves the control after a change, so the next key press is a shortcut again.
  ["category", "attribute", "below-on", "below", "status"].forEach((id) =>
    $(id).addEventListener("change", (event) => { event.target.blur(); load(0, "first").catch(fail); }));
  await load(0, "first");
}

function fail(err) {
  $("error").textContent = err.message;
  $("detail").hidden = false;
}

start().catch(fail);
