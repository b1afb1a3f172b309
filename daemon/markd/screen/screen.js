// markd's reference customer screen: plain ES2020, no framework, no build step.
//
// It shows what the customer needs to see, in large Russian text, from markd's control API
// (docs/api.md walks through this file, "The customer screen"):
//
//   the launcher opens /screen/#ticket=T      (POST /v1/session with the token, on loopback)
//   POST /v1/session?ticket=T                 the one-use ticket becomes this page's cookie
//   GET /v1/status, GET /v1/receipt           the till's state; the open receipt
//   WebSocket /v1/events?since=ID             verdicts and sale events, live; after a
//                                             reconnect the ones missed, or a "gap"
//   GET /v1/receipts/{id}                     what became of the receipt in flight when the
//                                             connection dropped (markd restarted)
//   POST /v1/receipt/close + Idempotency-Key  the «Оплатить» button, shown only with
//                                             [api] screen_demo_pay (a demonstration: it
//                                             registers the receipt paid, no payment taken)
//
// The page never holds the token. Text from markd (item names, verdict messages) is set with
// textContent only: nothing it sends becomes markup.
"use strict";

/** Event kinds the screen follows (GET /v1/events?kinds=). */
const KINDS = "verdict,sale-unit,sale-refused,fiscal-receipt,fiscal-error,service-stopping";
/** Reconnect backoff: doubled after each failure, back to the least once connected. */
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 4000;
/** How often a receipt whose close is under way is asked about again. */
const POLL_MS = 500;

const view = {
  headline: document.getElementById("headline"),
  detail: document.getElementById("detail"),
  receipt: document.getElementById("receipt"),
  lines: document.getElementById("lines"),
  total: document.getElementById("total"),
  pay: document.getElementById("pay"),
  connection: document.getElementById("connection"),
};

/** The id of the last event read: `since` of the next connection. */
let lastEventId = "";
/** The receipt this screen is following (as GET /v1/receipt gave it) until its outcome is known. */
let current = null;
let socket = null;
let retryMs = RETRY_MIN_MS;
let retryTimer = null;
let denied = false;
/** [api] screen_demo_pay (GET /v1/status: api): show «Оплатить». A real kiosk closes from its
 * payment integration, with the token, once the bank approved; never from this page. */
let demoPay = false;
/** Bumped by each new outcome poll, so that only the latest one goes on. */
let polling = 0;

/** The page has no (or no longer a) session: markd answered 401 or 403. */
class Denied extends Error {}

/** 8990 → "89,90 ₽" (kopecks are integers; no floating point on money). */
function rubles(kopecks) {
  const whole = Math.trunc(kopecks / 100)
    .toString()
    .replace(/\B(?=(\d{3})+(?!\d))/g, "\u00a0");
  return `${whole},${String(kopecks % 100).padStart(2, "0")}\u00a0₽`;
}

function show(state, headline, detail = "") {
  document.body.dataset.state = state;
  view.headline.textContent = headline;
  view.detail.textContent = detail;
}

function showIdle() {
  show("idle", "Отсканируйте товар", "Поднесите код маркировки к сканеру");
}

/** The receipt's lines and total (null or no units: hidden); «Оплатить» while it is open, in a
 * demonstration only. */
function showLines(receipt, payable) {
  if (!receipt || !receipt.units || receipt.units.length === 0) {
    view.receipt.hidden = true;
    return;
  }
  view.lines.replaceChildren(
    ...receipt.units.map((unit) => {
      const line = document.createElement("li");
      const name = document.createElement("span");
      const price = document.createElement("span");
      name.textContent = unit.name;
      price.textContent = rubles(unit.amount_kopecks ?? unit.price_kopecks);
      line.append(name, price);
      return line;
    }),
  );
  view.total.textContent = rubles(receipt.total_kopecks);
  view.pay.hidden = !(payable && demoPay);
  view.receipt.hidden = false;
}

/** The open receipt: its last unit large, all its lines below. */
function showReceipt(receipt) {
  current = receipt;
  if (!receipt.units.length) {
    showIdle();
  } else {
    const unit = receipt.units[receipt.units.length - 1];
    show("item", unit.name, rubles(unit.amount_kopecks ?? unit.price_kopecks));
  }
  showLines(receipt, receipt.units.length > 0);
}

/** What the printer's state (GET /v1/status: printer) stops, or null when it is ready. */
function printerProblem(printer) {
  if (!printer) return null;
  const reason = printer.last_error ? printer.last_error.reason : "";
  if ((printer.device && printer.device.paper_present === false) || reason === "paper-out") {
    return "В принтере чеков закончилась бумага";
  }
  if (printer.state === "unreachable" || printer.queue_blocked) return "Принтер чеков недоступен";
  if (printer.state === "attention") return "Принтер чеков не готов";
  return null;
}

async function api(path, options = {}) {
  // Same origin: the browser sends the session cookie (SameSite=Strict, Path=/v1) by itself.
  const answer = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
  if (answer.status === 401 || answer.status === 403) throw new Denied(`${path}: ${answer.status}`);
  let body = null;
  try {
    body = await answer.json();
  } catch {
    // a body that is not JSON: the status says enough
  }
  return { status: answer.status, body };
}

function deny() {
  denied = true;
  current = null;
  clearTimeout(retryTimer);
  if (socket) socket.close();
  view.receipt.hidden = true;
  view.connection.hidden = true;
  show("denied", "Экран не подключён к кассе", "Нет доступа к markd. Обратитесь к сотруднику");
}

/** Anything that went wrong: no access (shown, for good), or no connection (retried). */
function failed(error) {
  if (error instanceof Denied) {
    deny();
    return;
  }
  if (denied) return;
  view.connection.hidden = false;
  clearTimeout(retryTimer);
  retryTimer = setTimeout(reconnect, retryMs);
  retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
}

/** The till's state read afresh: at start, after a gap, after a reconnect that missed events. */
async function resync() {
  const status = await api("/v1/status");
  readSettings(status.body);
  const { status: code, body } = await api("/v1/receipt");
  if (code !== 200) {
    show("staff", "Касса не готова", "Обратитесь к сотруднику");
    return;
  }
  const open = body.receipt;
  if (current && (!open || open.id !== current.id)) {
    // The receipt followed here is no longer the open one: closed, cancelled, or settled by
    // markd's recovery after a restart. Its outcome says which.
    await outcome(current);
    return;
  }
  if (open) {
    showReceipt(open);
    return;
  }
  const problem = printerProblem(status.body && status.body.printer);
  if (problem) {
    show("printer", problem, "Обратитесь к сотруднику");
  } else if (!["printed", "not-printed", "refused", "rescan"].includes(document.body.dataset.state)) {
    showIdle();
  }
}

/** What became of `receipt` (GET /v1/receipts/{id}); asked again while its close runs. */
async function outcome(receipt) {
  const round = ++polling;
  const { status, body } = await api(`/v1/receipts/${receipt.id}`);
  if (round !== polling) return;
  if (status === 404) {
    // Not known here (older than the index keeps): nothing to tell the customer.
    current = null;
    showIdle();
    return;
  }
  const found = status === 200 ? body.receipt : { state: "closing" }; // 503: ask again
  switch (found.state) {
    case "registered":
      current = null;
      show("printed", "Чек напечатан", `Итого ${rubles(found.total_kopecks)}. Спасибо за покупку!`);
      showLines(receipt, false);
      break;
    case "cancelled":
      current = null;
      show(
        "not-printed",
        "Чек не напечатан",
        found.reason === "nothing-left-to-register"
          ? "Деньги будут возвращены. Обратитесь к сотруднику"
          : "Покупка отменена. Обратитесь к сотруднику",
      );
      view.receipt.hidden = true;
      break;
    case "unknown-needs-technician":
      show("staff", "Чек не подтверждён", "Обратитесь к сотруднику");
      view.pay.hidden = true;
      break;
    case "closing":
      show("closing", "Печать чека…", "Подождите, пожалуйста");
      view.pay.hidden = true;
      setTimeout(() => {
        if (round === polling) outcome(receipt).catch(failed);
      }, POLL_MS);
      break;
    default: // "open": still being built, so it is the open receipt again
      current = null;
      await resync();
  }
}

/** The open receipt changed (a unit was added): read it. */
async function refreshReceipt() {
  const { status, body } = await api("/v1/receipt");
  if (status === 200 && body.receipt) showReceipt(body.receipt);
}

function onEvent(event) {
  if (event.id) lastEventId = event.id;
  const data = event.data || {};
  switch (event.kind) {
    case "gap": // the events missed are lost (markd restarted, or too many): read the state
      resync().catch(failed);
      break;
    case "verdict":
      if (data.scanner === "api") break; // a check by a POS or a technician, not a scan here
      if (data.decision === "deny") {
        show("refused", data.message, "Этот товар нельзя продать. Отложите его");
      } else if (data.decision === "rescan") {
        show("rescan", "Отсканируйте ещё раз", data.message);
      }
      break;
    case "sale-unit":
      refreshReceipt().catch(failed);
      break;
    case "sale-refused":
      if (data.source === "printer") {
        show("printer", data.message_ru, "Обратитесь к сотруднику");
      } else {
        show("refused", data.message_ru, "Этот товар нельзя продать. Отложите его");
      }
      break;
    case "fiscal-receipt":
      if (current && data.receipt === current.id) outcome(current).catch(failed);
      break;
    case "fiscal-error":
      resync().catch(failed);
      break;
    case "service-stopping":
      view.connection.hidden = false;
      break;
  }
}

/** The event stream over a WebSocket, from the last event read on (`since`). */
function connect() {
  if (denied) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let url = `${scheme}://${location.host}/v1/events?kinds=${KINDS}`;
  if (lastEventId) url += `&since=${encodeURIComponent(lastEventId)}`;
  const first = !lastEventId;
  socket = new WebSocket(url);
  socket.onopen = () => {
    retryMs = RETRY_MIN_MS;
    view.connection.hidden = true;
    // The first connection has no id to resume from: read the state once it is open, so
    // that nothing falls between the two.
    if (first) resync().catch(failed);
  };
  socket.onmessage = (message) => onEvent(JSON.parse(message.data));
  socket.onclose = () => {
    socket = null;
    failed(new Error("event stream closed"));
  };
}

/** Before each new connection, one request: a 401 here (the session ended) is shown, where a
 * refused WebSocket handshake would only look like a lost connection. */
async function reconnect() {
  try {
    await api("/v1/status");
    connect();
  } catch (error) {
    failed(error);
  }
}

/** What the page takes from GET /v1/status: whether this is a demonstration. */
function readSettings(status) {
  demoPay = Boolean(status && status.api && status.api.screen_demo_pay === true);
}

async function pay() {
  const receipt = current;
  if (!receipt || !demoPay) return;
  view.pay.hidden = true;
  show("closing", "Печать чека…", "Подождите, пожалуйста");
  try {
    // The same key for every attempt at this receipt: a close sent again learns the outcome
    // of the first instead of closing twice (docs/api.md, "Idempotency-Key").
    await api("/v1/receipt/close", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": `screen-${receipt.id}` },
      body: JSON.stringify({ receipt: receipt.id }),
    });
    await outcome(receipt);
  } catch (error) {
    // markd went away during the close: the reconnect's resync asks for the outcome.
    failed(error);
  }
}

async function start() {
  // The ticket rides in the fragment, which the browser never sends; drop it from the address
  // and the history at once.
  const ticket = new URLSearchParams(location.hash.slice(1)).get("ticket");
  history.replaceState(null, "", location.pathname + location.search);
  view.pay.addEventListener("click", () => pay());
  try {
    if (ticket) {
      const { status } = await api(`/v1/session?ticket=${encodeURIComponent(ticket)}`, {
        method: "POST",
      });
      if (status !== 201) throw new Denied(`session: ${status}`);
    }
    readSettings((await api("/v1/status")).body); // no cookie, no ticket: 401, shown as such
    connect();
  } catch (error) {
    failed(error);
  }
}

start();
