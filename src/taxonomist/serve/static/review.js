// Review page: keyboard-first accept/correct of predictions. Plain JS, no build step.
//
// Two rules keep key presses from landing on the wrong product:
// - a decision names its item (id + attribute) when the key is pressed, never a row index;
// - while a save (or a page load) is in flight, further keys are ignored, so pressing "a" twice quickly
//   accepts one item, not that item and whichever row is drawn next.
// Pages are fetched by cursor (the last row's confidence, id, attribute), so a "pending" list that shrinks
// as items are decided never skips rows.
"use strict";

const PAGE = 50;
const $ = (id) => document.getElementById(id);
const state = { items: [], total: 0, offset: 0, next: null, current: -1, meta: null, busy: false, reload: false };

async function api(path, options) {
  const response = await fetch(path, options);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const err = new Error(typeof body.detail === "string" ? body.detail : `${response.status} ${response.statusText}`);
    err.body = body;
    throw err;
  }
  return response.json();
}

// Runs one action at a time; actions arriving meanwhile are dropped (not queued). A filter change is
// never dropped: it sets state.reload, and the action in flight (or a new one) reloads the list after.
async function exclusive(action) {
  if (state.busy) return;
  state.busy = true;
  document.body.classList.add("busy");
  try {
    if (action) await action();
    while (state.reload) {
      state.reload = false;
      await load(null, "first");
    }
  } catch (err) {
    fail(err);
  } finally {
    state.busy = false;
    document.body.classList.remove("busy");
  }
}

function reloadList() {
  state.reload = true;
  exclusive(null);
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

// cursor: {after} or {before} an item's cursor, or nothing for the first page.
async function load(cursor, select) {
  const params = filters();
  if (cursor?.after) params.set("after", cursor.after);
  if (cursor?.before) params.set("before", cursor.before);
  const page = await api(`api/predictions?${params}`);
  Object.assign(state, { items: page.items, total: page.total, offset: page.offset, next: page.next });
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
    row.addEventListener("click", () => { if (!state.busy) show(k); });
    body.append(row);
  });
  const end = state.offset + state.items.length;
  $("count").textContent = state.total
    ? `${state.offset + 1}–${end} of ${state.total} predictions`
    : "No predictions match the filters.";
}

function indexOf(id, attribute) {
  return state.items.findIndex((i) => i.id === id && i.attribute === attribute);
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
  $("item-title").textContent = item.title ?? "";
  $("item-title").hidden = !item.title;
  $("title").textContent = `${item.id} · ${item.category} · ${item.attribute}`;
  $("predicted").textContent = item.value ?? "—";
  $("confidence").textContent = item.confidence.toFixed(3);
  $("decision").textContent = item.decision ? `${item.decision.action}: ${item.decision.value}` : "none";
  const others = $("others");
  others.replaceChildren();
  item.others.forEach((o) => {
    const row = document.createElement("tr");
    cell(row, o.attribute);
    cell(row, o.value ?? "—");
    cell(row, o.confidence.toFixed(2));
    others.append(row);
  });
  $("others-box").hidden = !item.others.length;
  const choices = $("choices");
  choices.replaceChildren();
  $("typed-options").replaceChildren();
  // The model's nine best values have keys; the rest are one "/" away, in the typed box's list.
  item.choices.forEach((value, n) => {
    option($("typed-options"), value);
    if (n >= 9) return;
    const li = document.createElement("li");
    const p = item.probabilities[value];
    li.textContent = `[${n + 1}] ${value}` + (p === undefined ? "" : ` · ${p.toFixed(2)}`);
    li.classList.toggle("predicted", value === item.value);
    li.classList.toggle("chosen", item.decision?.value === value);
    li.addEventListener("click", () => exclusive(() => decide(item, value)));
    choices.append(li);
  });
  const more = item.choices.length - 9;
  $("more").textContent = more > 0 ? `and ${more} more: press / and type one` : "";
  $("more").hidden = more <= 0;
  $("typed").value = "";
}

async function move(step) {
  const next = state.current + step;
  if (next >= 0 && next < state.items.length) return show(next);
  if (step > 0 && state.next) return load({ after: state.next }, "first");
  if (step < 0 && state.offset > 0) return load({ before: state.items[0].cursor }, "last");
}

// value undefined = accept the prediction. The item is the one shown when the key was pressed.
// `replaces` names the decision shown: one made meanwhile in another tab (or by another reviewer) is not
// overwritten; the server answers 409 with it, and the page shows it and stays on the item.
async function decide(item, value) {
  let saved;
  try {
    saved = await api("api/decisions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: item.id, attribute: item.attribute, value, replaces: item.decision?.value ?? null }),
    });
  } catch (err) {
    if (err.body?.item) update(err.body.item, item);
    throw err;
  }
  if (update(saved, item) === state.current) await move(1);
}

// Draws `saved` (the server's item) in place of `item`; its row index, or -1 if it is no longer listed.
function update(saved, item) {
  if (!item.decision && saved.decision) state.meta.reviewed += 1;
  showProgress();
  const k = indexOf(item.id, item.attribute);
  if (k < 0) return k; // the list was reloaded meanwhile; nothing on screen to update
  state.items[k] = saved;
  renderRow(document.querySelector(`#rows tr[data-index="${k}"]`), saved);
  if (k === state.current) show(k);
  return k;
}

function showProgress() {
  $("progress").textContent = `${state.meta.reviewed} / ${state.meta.predictions} reviewed`;
}

// The value as typed wins over one differing only in case ("red" is not "Red" where both are allowed).
function typedValue(item) {
  const typed = $("typed").value.trim();
  const text = typed.toLowerCase();
  const allowed = item?.allowed ?? [];
  const prefixed = allowed.filter((v) => v.toLowerCase().startsWith(text));
  return allowed.find((v) => v === typed)
    ?? allowed.find((v) => v.toLowerCase() === text)
    ?? (prefixed.length === 1 ? prefixed[0] : undefined);
}

function leaveTyped() {
  $("typed").value = "";
  $("typed").blur();
}

$("typed").addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    event.preventDefault();
    leaveTyped();
    return;
  }
  if (event.key !== "Enter") return;
  event.preventDefault();
  const item = state.items[state.current];
  const value = typedValue(item);
  if (value === undefined) {
    $("error").textContent = `"${$("typed").value}" is not one allowed value`;
    return;
  }
  leaveTyped();
  exclusive(() => decide(item, value));
});

document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select") || event.ctrlKey || event.metaKey || event.altKey) return;
  const item = state.items[state.current];
  let action;
  if (event.key === "j" || event.key === "ArrowDown") action = () => move(1);
  else if (event.key === "k" || event.key === "ArrowUp") action = () => move(-1);
  else if (event.key === "a" && item) action = () => decide(item, undefined);
  else if (/^[1-9]$/.test(event.key) && item && Number(event.key) <= item.choices.length) {
    const value = item.choices[Number(event.key) - 1];
    action = () => decide(item, value);
  } else if (event.key === "/") {
    event.preventDefault();
    if (!state.busy) $("typed").focus();
    return;
  } else return;
  event.preventDefault();
  exclusive(action);
});

async function start() {
  state.meta = await api("api/meta");
  Object.keys(state.meta.categories).forEach((c) => option($("category"), c));
  state.meta.attributes.forEach((a) => option($("attribute"), a));
  $("below").value = state.meta.threshold;
  showProgress();
  // Focus leaves the control after a change, so the next key press is a shortcut again.
  ["category", "attribute", "below-on", "below", "status"].forEach((id) =>
    $(id).addEventListener("change", (event) => { event.target.blur(); reloadList(); }));
  state.reload = true;
  await exclusive(null);
  document.body.dataset.ready = "true";
}

function fail(err) {
  $("error").textContent = err.message;
  $("detail").hidden = false;
}

start().catch(fail);
