// The MetaDisk page: plain JavaScript on the node's public API, nothing else.
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const nodeMeta = document.querySelector('meta[name="metadisk-node"]');
  const NODE = ((nodeMeta && nodeMeta.content) || '').replace(/\/+$/, '');
  const TOKEN_KEY = 'metadisk.token';
  const STATUS_INTERVAL = 5000; // ms between status (and balance) refreshes
  const UPLOAD_COST = 4; // credit per uploaded byte: 1 for the transfer in, 3 for the hosting
  const HEX64 = /^[0-9a-f]{64}$/;
  const TOKEN = /^[A-Za-z0-9]{1,128}$/;
  // Files from this size up go through tus (resumable); smaller ones in one POST.
  const TUS_THRESHOLD = 8 * 1024 * 1024;
  const TUS_PREFIX = 'metadisk.tus:'; // localStorage: fingerprint -> upload id
  // Bytes of one PATCH: each 204 is a point the upload is durable to, whatever buffers between;
  // a 16th of the file, from 4 to 64 MiB, so that the node's sync of each is little of the time.
  const tusChunk = (size) => Math.min(64 * 1024 * 1024, Math.max(4 * 1024 * 1024, Math.ceil(size / 16)));
  const RETRY_DELAYS = [1, 2, 4, 8, 15, 30]; // seconds between attempts, the last repeated
  const MAX_ATTEMPTS = 20; // attempts in a row without progress before giving up
  const STALL_SECONDS = 60; // a PATCH with no progress (nor answer) this long is cut

  const url = (path) => NODE + path;

  // ---- Formatting ---------------------------------------------------------

  const UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

  function bytes(n) {
    n = Number(n) || 0;
    if (Math.abs(n) < 1024) return `${n} B`;
    let value = n / 1024;
    let i = 0;
    while (Math.abs(value) >= 1024 && i < UNITS.length - 1) {
      value /= 1024;
      i += 1;
    }
    const digits = Math.abs(value) < 10 ? 2 : Math.abs(value) < 100 ? 1 : 0;
    return `${Number(value.toFixed(digits))} ${UNITS[i]}`;
  }

  const rate = (n) => `${bytes(n)}/s`;
  const exact = (n) => `${Number(n).toLocaleString('en-US')} bytes`;

  function duration(seconds) {
    seconds = Math.max(0, Math.ceil(seconds));
    if (seconds < 60) return `${seconds} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return `${hours} h ${minutes % 60} min`;
    return `${Math.round(hours / 24)} days`;
  }

  // ---- Errors: every answer of the API as a sentence ----------------------

  const MESSAGES = {
    'network': 'Could not reach the node. Check the connection and that the node is running.',
    'not-found': 'The node has no such page or API route.',
    'method-not-allowed': 'The node does not accept this request here.',
    'internal-error': 'The node failed unexpectedly (the details are in its log). Try again later.',
    'database-unavailable': 'The node cannot reach its database right now. Try again in a moment.',
    'too-many-requests': 'Too many unknown tokens came from this address. Try again {retry}.',
    'too-many-connections': 'Too many connections from this address are open to the node. Try again {retry}.',
    'node-busy': 'The node has as many connections as it can take. Try again {retry}.',
    'request-timeout': 'The request took too long to reach the node. Try again.',
    'no-file': 'No file arrived at the node. Choose a file and try again.',
    'bad-request': 'The node could not read the request.',
    'connection-lost': 'The connection broke before the whole file arrived. Try again.',
    'token-required': 'This node needs an access token for transfers: create one under “Access token”.',
    'invalid-token': 'The node does not know this access token.',
    'balance-insufficient': 'The token has not enough credit for this transfer.',
    'length-required': 'The browser did not say how large the upload is; the node needs that.',
    'file-too-large': 'The file is larger than this node accepts ({max}).',
    'request-too-large': 'The request is larger than the node accepts.',
    'transfer-limit-reached': 'The node has used up its transfer allowance for this month. Try again {retry}.',
    'storage-full': 'The node’s storage is full: it cannot take this file now.',
    'unpaid-upload-limit': 'The node is taking in too much from clients that have not paid yet. Try again {retry}.',
    'invalid-filehash': 'That is not a filehash: it has 64 hexadecimal digits.',
    'invalid-key': 'That is not a key: it has 64 hexadecimal digits.',
    'file-not-found': 'No file with this filehash is known to this node.',
    'File not found': 'No file with this filehash is known to this node.',
    'error-downloading-file': 'No host delivered an intact copy of this file. The charge was refunded; try again later.',
    'invalid-range': 'The node cannot serve that part of the file.',
    'invalid-authentication': 'The node refused the secret key.',
    'too-many-uploads': 'This token already has as many unfinished uploads as the node allows. Finish or cancel one, or try again {retry}.',
    'upload-not-found': 'The node has no such unfinished upload (was it made on another node?). Start the upload again.',
    'upload-expired': 'That unfinished upload expired and was removed (its credit refunded). Start the upload again.',
    'upload-locked': 'Another request is still writing to this upload. Trying again in a moment.',
    'upload-incomplete': 'Part of the file has not reached the node yet.',
    'offset-mismatch': 'The node holds a different part of the file than the page thought; resuming from the node’s offset.',
    'upload-length-exceeded': 'More bytes were sent than the upload’s declared size.',
    'unsupported-version': 'The node speaks another version of the resumable upload protocol (tus).',
    'unsupported-content-type': 'The upload’s bytes were sent with the wrong Content-Type.',
    'unsupported-checksum': 'The node does not know that checksum algorithm (it takes sha1 and sha256).',
    'checksum-mismatch': 'Part of the file arrived damaged; the node discarded it. Sending it again.',
    'error': 'The node does not know this access token, or the promocode is unknown or already redeemed.',
  };

  // What a status alone says, for answers without a body (HEAD) or with an unknown one.
  const BY_STATUS = {
    400: 'bad-request', 401: 'invalid-token', 402: 'balance-insufficient', 404: 'file-not-found',
    408: 'request-timeout', 411: 'length-required', 413: 'file-too-large', 416: 'invalid-range',
    429: 'too-many-requests', 500: 'internal-error', 502: 'error-downloading-file', 507: 'storage-full',
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function retryText(retryAfter) {
    const seconds = Number(retryAfter);
    return Number.isFinite(seconds) && seconds > 0 ? `in ${duration(seconds)}` : 'later';
  }

  function apiError(status, body, retryAfter) {
    const given = body && typeof body === 'object' ? body.error || body.status : null;
    const code = MESSAGES[given] ? given : (given || BY_STATUS[status] || null);
    let message = MESSAGES[code];
    if (!message) {
      message = status === 503
        ? 'The node cannot serve this right now. Try again later.'
        : `The node answered ${status}${code ? ` (${code})` : ''}.`;
    }
    message = message
      .replace('{retry}', retryText(retryAfter))
      .replace('{max}', state.status ? bytes(state.status.storage.max_file_size) : 'its limit');
    return new ApiError(status, code, message);
  }

  async function call(method, path, json) {
    const options = { method, cache: 'no-store', headers: {} };
    if (json !== undefined) {
      options.headers['Content-Type'] = 'application/json';
      options.body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(url(path), options);
    } catch (e) {
      throw new ApiError(0, 'network', MESSAGES.network);
    }
    let body = null;
    if (method !== 'HEAD') {
      const text = await response.text().catch(() => '');
      try {
        body = text ? JSON.parse(text) : null;
      } catch (e) {
        body = null;
      }
    }
    if (!response.ok) throw apiError(response.status, body, response.headers.get('Retry-After'));
    return { body, headers: response.headers, status: response.status };
  }

  // ---- Messages on the page -----------------------------------------------

  function show(element, kind, text) {
    element.className = `message ${kind}`;
    element.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    element.textContent = text;
    element.hidden = false;
  }

  function hide(element) {
    element.hidden = true;
    element.textContent = '';
  }

  let toastTimer = null;
  function toast(text) {
    const element = $('toast');
    element.textContent = text;
    element.classList.add('show');
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => element.classList.remove('show'), 1800);
  }

  // ---- State --------------------------------------------------------------

  const state = {
    accounts: null, // true, false (the node charges nothing), or null until known
    token: null,
    tokenKnown: true, // false once the node said it does not know the token
    balance: null,
    status: null,
    file: null,
    upload: null, // the upload in flight: an XMLHttpRequest, or a tus upload (both abort())
    resumable: null, // { id, offset }: the picked file's unfinished upload on the node
    record: null, // the find record shown
  };

  function loadToken() {
    try {
      return localStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  function saveToken(token) {
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // Private browsing: the token lives as long as the page.
    }
  }

  // ---- Access token ---------------------------------------------------------

  function renderToken() {
    const enabled = state.accounts !== false;
    $('token-disabled').hidden = enabled;
    $('token-body').hidden = !enabled;
    $('token-none').hidden = Boolean(state.token);
    $('token-have').hidden = !state.token;
    $('token-value').value = state.token || '';
    if (state.balance === null) {
      $('balance').textContent = state.token && !state.tokenKnown ? 'Unknown token' : '…';
      $('balance-exact').textContent = '';
    } else {
      $('balance').textContent = bytes(state.balance);
      $('balance-exact').textContent = exact(state.balance);
    }
    renderSelected();
  }

  async function refreshBalance() {
    if (!state.token || state.accounts === false) return;
    try {
      const { body } = await call('GET', `/accounts/token/balance/${encodeURIComponent(state.token)}`);
      state.balance = body.balance;
      state.tokenKnown = true;
    } catch (e) {
      if (e.status === 404) {
        state.tokenKnown = false;
        state.balance = null;
        show($('token-message'), 'error',
          'The node does not know this token (was it made on another node?). Create a new one or use another.');
      } else {
        show($('token-message'), 'error', `Could not read the balance. ${e.message}`);
      }
    }
    renderToken();
  }

  async function newToken() {
    const button = $('token-new');
    button.disabled = true;
    hide($('token-message'));
    try {
      const { body } = await call('POST', '/accounts/token/new');
      useToken(body.token);
      show($('token-message'), 'ok', 'Token created and kept in this browser. Copy it somewhere safe too.');
      await refreshBalance();
    } catch (e) {
      show($('token-message'), 'error', `Could not create a token. ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  function useToken(token) {
    state.token = token;
    state.tokenKnown = true;
    state.balance = null;
    saveToken(token);
    renderToken();
  }

  async function useExistingToken(event) {
    event.preventDefault();
    const input = $('token-use');
    const token = input.value.trim();
    hide($('token-message'));
    if (!TOKEN.test(token)) {
      input.setAttribute('aria-invalid', 'true');
      show($('token-message'), 'error', 'A token is made of letters and digits only.');
      input.focus();
      return;
    }
    input.removeAttribute('aria-invalid');
    try {
      const { body } = await call('GET', `/accounts/token/balance/${encodeURIComponent(token)}`);
      useToken(token);
      state.balance = body.balance;
      input.value = '';
      renderToken();
      show($('token-message'), 'ok', 'Token found; it is kept in this browser now.');
    } catch (e) {
      const text = e.status === 404 ? 'The node does not know this token.' : e.message;
      show($('token-message'), 'error', text);
    }
  }

  function forgetToken() {
    const ok = window.confirm(
      'Forget this token? Its credit stays on the node, but only the token gives access to it: copy it first.');
    if (!ok) return;
    useToken(null);
    hide($('token-message'));
    $('token-new').focus();
  }

  async function redeem(event) {
    event.preventDefault();
    const input = $('promocode');
    const code = input.value.trim();
    hide($('token-message'));
    if (!code) {
      show($('token-message'), 'error', 'Enter a promocode first.');
      input.focus();
      return;
    }
    const before = state.balance;
    try {
      await call('POST', `/accounts/token/redeem/${encodeURIComponent(state.token)}`, { promocode: code });
      input.value = '';
      await refreshBalance();
      const gained = before !== null && state.balance !== null ? ` (+${bytes(state.balance - before)})` : '';
      show($('token-message'), 'ok', `Promocode redeemed${gained}.`);
    } catch (e) {
      const text = e.status === 403
        ? 'That promocode is unknown, or this token has already redeemed it.'
        : `Could not redeem the promocode. ${e.message}`;
      show($('token-message'), 'error', text);
    }
  }

  async function loadPrices() {
    const tbody = $('prices-body');
    try {
      const { body } = await call('GET', '/accounts/token/prices');
      state.accounts = true;
      tbody.replaceChildren();
      for (const price of body.prices) {
        const row = tbody.insertRow();
        const amount = row.insertCell();
        amount.textContent = bytes(price.amount);
        amount.title = exact(price.amount);
        row.insertCell().textContent = Number(price.cost).toLocaleString('en-US');
      }
      if (!body.prices.length) {
        const cell = tbody.insertRow().insertCell();
        cell.colSpan = 2;
        cell.className = 'muted';
        cell.textContent = 'This node sells no credit.';
      }
    } catch (e) {
      tbody.replaceChildren();
      if (e.status === 404) {
        state.accounts = false; // no /accounts: transfers are free
      } else {
        const cell = tbody.insertRow().insertCell();
        cell.colSpan = 2;
        cell.className = 'muted';
        cell.textContent = `Could not load the prices. ${e.message}`;
      }
    }
    // What the page learnt: "true", "false" or "unknown" (for scripts and tests).
    document.body.dataset.accounts = state.accounts === null ? 'unknown' : String(state.accounts);
    renderToken();
  }

  // ---- Upload -----------------------------------------------------------------

  function pickFile(file) {
    if (!file || state.upload) return;
    state.file = file;
    state.resumable = null;
    hide($('upload-message'));
    $('upload-result').hidden = true;
    $('progress-block').hidden = true;
    renderSelected();
    $('upload-button').focus();
    offerResume(file);
  }

  // ---- Resumable uploads (tus 1.0.0, docs/protocol.md section 2.10) -----------

  // As tus-js-client does: the same name, size and modification time is the same file.
  const fingerprint = (file) => `${TUS_PREFIX}${NODE}|${file.name}|${file.size}|${file.lastModified}`;

  function remembered(file) {
    try {
      return localStorage.getItem(fingerprint(file));
    } catch (e) {
      return null;
    }
  }

  function remember(file, id) {
    try {
      if (id) localStorage.setItem(fingerprint(file), id);
      else localStorage.removeItem(fingerprint(file));
    } catch (e) {
      // Private browsing: an upload resumes within this page only.
    }
  }

  const tusPath = (id) => `/api/tus/${encodeURIComponent(id)}`;

  // The node's offset for an upload; null when it no longer has it (expired, ended).
  async function tusOffset(id) {
    let response;
    try {
      response = await fetch(url(tusPath(id)), {
        method: 'HEAD', cache: 'no-store', headers: { 'Tus-Resumable': '1.0.0' },
      });
    } catch (e) {
      throw new ApiError(0, 'network', MESSAGES.network);
    }
    if (response.status === 404 || response.status === 410) return null;
    if (!response.ok) throw apiError(response.status, null, response.headers.get('Retry-After'));
    return Number(response.headers.get('Upload-Offset'));
  }

  // A file picked again after a reload: its unfinished upload may go on where it stopped.
  async function offerResume(file) {
    const id = file.size >= TUS_THRESHOLD ? remembered(file) : null;
    $('resume-note').hidden = true;
    $('restart-button').hidden = true;
    $('upload-button').textContent = 'Upload';
    if (!id) return;
    let offset = null;
    try {
      offset = await tusOffset(id);
    } catch (e) {
      return; // the node cannot say now: a new upload it is
    }
    if (state.file !== file || state.upload) return;
    if (offset === null) {
      remember(file, null);
      return;
    }
    state.resumable = { id, offset };
    const share = Math.floor((offset / file.size) * 100);
    $('resume-note').textContent = `An earlier upload of this file stopped at ${bytes(offset)} `
      + `of ${bytes(file.size)} (${share}%). It can go on from there.`;
    $('resume-note').hidden = false;
    $('upload-button').textContent = 'Resume upload';
    $('restart-button').hidden = false;
  }

  async function startOver() {
    const file = state.file;
    const resumable = state.resumable;
    if (!file || !resumable || state.upload) return;
    state.resumable = null;
    remember(file, null);
    // Ended on the node: its bytes go and its credit comes back.
    await fetch(url(tusPath(resumable.id)), {
      method: 'DELETE', headers: { 'Tus-Resumable': '1.0.0' },
    }).catch(() => null);
    offerResume(file);
    refreshBalance();
  }

  function base64(text) {
    return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
  }

  async function tusCreate(file) {
    const metadata = [`filename ${base64(file.name)}`];
    if (state.accounts && state.token) metadata.push(`token ${base64(state.token)}`);
    let response;
    try {
      response = await fetch(url('/api/tus/'), {
        method: 'POST',
        cache: 'no-store',
        headers: {
          'Tus-Resumable': '1.0.0',
          'Upload-Length': String(file.size),
          'Upload-Metadata': metadata.join(','),
        },
      });
    } catch (e) {
      throw new ApiError(0, 'network', MESSAGES.network);
    }
    if (response.status !== 201) {
      const body = await response.json().catch(() => null);
      throw apiError(response.status, body, response.headers.get('Retry-After'));
    }
    return response.headers.get('Location').split('/').pop();
  }

  // One PATCH of the file from `offset`; resolves with the answer's headers.
  function tusPatch(upload, file, offset, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      upload.xhr = xhr;
      // A connection that moves nothing for a while is as good as cut: the next attempt resumes.
      let stalled = false;
      let watchdog = null;
      const watch = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => {
          stalled = true;
          xhr.abort();
        }, STALL_SECONDS * 1000);
      };
      xhr.addEventListener('loadend', () => clearTimeout(watchdog));
      xhr.upload.addEventListener('progress', (event) => {
        watch();
        onProgress(offset + event.loaded);
      });
      watch();
      xhr.addEventListener('load', () => {
        if (xhr.status === 204) {
          resolve((name) => xhr.getResponseHeader(name));
          return;
        }
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (e) {
          body = null;
        }
        reject(apiError(xhr.status, body, xhr.getResponseHeader('Retry-After')));
      });
      xhr.addEventListener('error', () => reject(new ApiError(0, 'network', MESSAGES.network)));
      xhr.addEventListener('abort', () => reject(stalled
        ? new ApiError(0, 'network', MESSAGES.network)
        : new ApiError(-1, 'aborted', 'aborted')));
      xhr.open('PATCH', url(tusPath(upload.id)));
      xhr.setRequestHeader('Tus-Resumable', '1.0.0');
      xhr.setRequestHeader('Upload-Offset', String(offset));
      xhr.setRequestHeader('Content-Type', 'application/offset+octet-stream');
      xhr.send(file.slice(offset, Math.min(file.size, offset + tusChunk(file.size))));
    });
  }

  // Wait `seconds`, or less if the browser says it is back online.
  function pause(seconds, upload) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        window.removeEventListener('online', done);
        upload.wake = null;
        resolve();
      };
      const timer = setTimeout(done, seconds * 1000);
      window.addEventListener('online', done);
      upload.wake = done;
    });
  }

  // Errors a retry may mend: the network, the node busy or restarting, another writer.
  const retryable = (e) => e.status === 0 || e.status === 409 || e.status === 423
    || e.status === 429 || e.status === 502 || e.status === 503 || e.status === 504;

  async function tusUpload(file) {
    const upload = { id: null, xhr: null, wake: null, aborted: false };
    upload.abort = () => {
      upload.aborted = true;
      if (upload.xhr) upload.xhr.abort();
      if (upload.wake) upload.wake();
    };
    state.upload = upload;
    setUploading(true);
    const meter = speedMeter(file.size);
    progress(0, file.size, 'Uploading', '');
    try {
      let offset = 0;
      if (state.resumable) {
        upload.id = state.resumable.id;
        offset = state.resumable.offset;
        state.resumable = null;
      } else {
        upload.id = await tusCreate(file);
        remember(file, upload.id);
      }
      let resumedFrom = offset; // shown once an upload goes on from where it stopped
      meter.restart(offset);
      let answer = null;
      let failures = 0;
      let reached = offset; // bytes the browser sent so far
      while (offset === null || offset < file.size || !answer) {
        if (upload.aborted) throw new ApiError(-1, 'aborted', 'aborted');
        try {
          if (offset === null) {
            // After a cut: the node says what it kept (tus: as much as arrived).
            offset = await tusOffset(upload.id);
            if (offset === null) throw apiError(410, { error: 'upload-expired' }, null);
            resumedFrom = offset;
            meter.restart(offset);
          }
          const start = offset;
          meter.show(start, resumedFrom);
          answer = await tusPatch(upload, file, start, (sent) => {
            reached = sent;
            meter.show(sent, resumedFrom);
            if (sent > start) failures = 0; // attempts count in a row without progress
          });
          offset = Number(answer('Upload-Offset'));
        } catch (e) {
          if (upload.aborted || !retryable(e)) throw e;
          offset = null;
          failures += 1;
          if (failures > MAX_ATTEMPTS) throw e;
          const wait = RETRY_DELAYS[Math.min(failures - 1, RETRY_DELAYS.length - 1)];
          progress(reached, file.size, 'Reconnecting…',
            `The connection broke after ${bytes(reached)} of ${bytes(file.size)}. `
            + `Trying again in ${duration(wait)}…`);
          await pause(wait, upload);
        }
      }
      progress(file.size, file.size, 'Encrypting and storing…', `${bytes(file.size)} sent`);
      let filehash = answer('MetaDisk-Filehash');
      let key = answer('MetaDisk-Key');
      if (!filehash || !key) {
        const { body } = await call('GET', tusPath(upload.id));
        ({ filehash, key } = body);
      }
      remember(file, null);
      progress(file.size, file.size, 'Done', `${bytes(file.size)} in ${duration(meter.seconds())}`);
      showResult(file, filehash, key);
    } catch (e) {
      $('progress-block').hidden = true;
      if (upload.aborted) {
        if (upload.id) {
          remember(file, null);
          await fetch(url(tusPath(upload.id)), {
            method: 'DELETE', headers: { 'Tus-Resumable': '1.0.0' },
          }).catch(() => null);
        }
        show($('upload-message'), 'info', 'Upload cancelled. Its credit was refunded.');
      } else {
        if (e.code === 'upload-expired' || e.code === 'upload-not-found') remember(file, null);
        const again = remembered(file) ? ' Pick the same file again to resume it.' : '';
        show($('upload-message'), 'error', `The upload failed. ${e.message}${again}`);
      }
    }
    uploadEnded();
  }

  // Bytes sent, the speed over the last seconds and the time left, as the progress text.
  function speedMeter(total) {
    const started = performance.now();
    let samples = [];
    return {
      restart(sent) {
        samples = [{ t: performance.now(), loaded: sent }];
      },
      seconds() {
        return (performance.now() - started) / 1000;
      },
      show(sent, resumedAt) {
        const now = performance.now();
        samples.push({ t: now, loaded: sent });
        while (samples.length > 2 && now - samples[0].t > 3000) samples.shift();
        const first = samples[0];
        const speed = now > first.t ? ((sent - first.loaded) * 1000) / (now - first.t) : 0;
        const left = speed > 0 ? ` · ${duration((total - sent) / speed)} left` : '';
        const resumed = resumedAt ? ` · resumed at ${bytes(resumedAt)}` : '';
        progress(sent, total, 'Uploading',
          `${bytes(sent)} of ${bytes(total)} · ${rate(Math.round(speed))}${left}${resumed}`);
      },
    };
  }

  function renderSelected() {
    const file = state.file;
    $('selected').hidden = !file;
    if (!file) return;
    $('selected-name').textContent = file.name;
    let meta = bytes(file.size);
    if (state.accounts) meta += ` · costs ${bytes(UPLOAD_COST * file.size)} of credit`;
    $('selected-meta').textContent = meta;
  }

  // A problem the page can see before sending anything, as a sentence; null if none.
  function uploadProblem(file) {
    const max = state.status && state.status.storage.max_file_size;
    if (max && file.size > max) return `The file is larger than this node accepts (${bytes(max)}).`;
    if (state.accounts && !state.token) {
      return 'An access token pays for uploads: create one under “Access token” first.';
    }
    if (state.accounts && !state.tokenKnown) return MESSAGES['invalid-token'];
    const cost = UPLOAD_COST * file.size;
    if (state.accounts && state.balance !== null && state.balance < cost) {
      return `This upload costs ${bytes(cost)} of credit; the token has ${bytes(state.balance)}.`;
    }
    return null;
  }

  async function startUpload() {
    const file = state.file;
    if (!file || state.upload) return;
    hide($('upload-message'));
    await refreshBalance();
    const problem = state.resumable ? null : uploadProblem(file);
    if (problem) {
      show($('upload-message'), 'error', problem);
      return;
    }
    $('resume-note').hidden = true;
    $('restart-button').hidden = true;
    if (file.size >= TUS_THRESHOLD) {
      tusUpload(file);
      return;
    }
    const form = new FormData();
    // The token goes before the file: the node then knows who pays before the first file byte.
    if (state.accounts && state.token) form.append('token', state.token);
    form.append('file', file, file.name);

    const xhr = new XMLHttpRequest();
    state.upload = xhr;
    const started = performance.now();
    const samples = [{ t: started, loaded: 0 }];
    setUploading(true);
    progress(0, file.size, 'Uploading', '');

    xhr.upload.addEventListener('progress', (event) => {
      if (!event.lengthComputable) return;
      const now = performance.now();
      const sent = Math.min(file.size, Math.round((event.loaded / event.total) * file.size));
      samples.push({ t: now, loaded: sent });
      while (samples.length > 2 && now - samples[0].t > 3000) samples.shift();
      const first = samples[0];
      const speed = now > first.t ? ((sent - first.loaded) * 1000) / (now - first.t) : 0;
      const left = speed > 0 ? ` · ${duration((file.size - sent) / speed)} left` : '';
      progress(sent, file.size, 'Uploading',
        `${bytes(sent)} of ${bytes(file.size)} · ${rate(Math.round(speed))}${left}`);
    });
    xhr.upload.addEventListener('load', () => {
      const seconds = (performance.now() - started) / 1000;
      const average = seconds > 0 ? ` · ${rate(Math.round(file.size / seconds))} on average` : '';
      progress(file.size, file.size, 'Encrypting and storing…',
        `${bytes(file.size)} sent in ${duration(seconds)}${average}`);
    });
    xhr.addEventListener('load', () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (e) {
        body = null;
      }
      if (xhr.status === 201 && body && HEX64.test(body.filehash)) {
        const seconds = (performance.now() - started) / 1000;
        progress(file.size, file.size, 'Done', `${bytes(file.size)} in ${duration(seconds)}`);
        showResult(file, body.filehash, body.key);
      } else {
        $('progress-block').hidden = true;
        const error = apiError(xhr.status, body, xhr.getResponseHeader('Retry-After'));
        show($('upload-message'), 'error', `The upload failed. ${error.message}`);
      }
      uploadEnded();
    });
    xhr.addEventListener('error', () => {
      $('progress-block').hidden = true;
      show($('upload-message'), 'error',
        'The upload was cut off: the connection to the node broke, or the node refused the file. '
        + 'Check the token’s balance and the node status, then try again.');
      uploadEnded();
    });
    xhr.addEventListener('abort', () => {
      $('progress-block').hidden = true;
      show($('upload-message'), 'info', 'Upload cancelled. Nothing was charged for it.');
      uploadEnded();
    });
    xhr.open('POST', url('/api/upload'));
    xhr.send(form);
  }

  function uploadEnded() {
    state.upload = null;
    $('upload-button').textContent = 'Upload';
    setUploading(false);
    refreshBalance();
    refreshStatus();
  }

  function setUploading(busy) {
    $('upload-button').disabled = busy;
    $('cancel-button').hidden = !busy;
    $('file-input').disabled = busy;
    $('dropzone').classList.toggle('disabled', busy);
  }

  function progress(sent, total, label, text) {
    $('progress-block').hidden = false;
    const bar = $('upload-progress');
    bar.value = total ? Math.round((sent / total) * 1000) / 10 : 100;
    bar.setAttribute('aria-valuetext', text || label);
    $('progress-label').textContent = label;
    $('progress-text').textContent = text;
  }

  function shareLink(filehash, key) {
    const page = window.location.href.split('#')[0];
    return `${page}#file=${filehash}&key=${key}`;
  }

  function showResult(file, filehash, key) {
    state.file = null;
    renderSelected();
    $('result-name').textContent = file.name;
    $('result-filehash').value = filehash;
    $('result-key').value = key;
    const link = shareLink(filehash, key);
    $('result-link').value = link;
    $('result-open').href = link;
    $('upload-result').hidden = false;
    $('result-filehash').focus();
    $('file-input').value = '';
  }

  // ---- Find and download ----------------------------------------------------

  function readHex(id, what) {
    const input = $(id);
    const value = input.value.trim().toLowerCase();
    input.value = value;
    if (!HEX64.test(value)) {
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      throw new Error(value ? `That is not a ${what}: it has 64 hexadecimal digits (0-9, a-f).`
        : `Enter the ${what} (64 hexadecimal digits).`);
    }
    input.removeAttribute('aria-invalid');
    return value;
  }

  async function find(filehash) {
    const { body } = await call('GET', `/api/find/${filehash}`);
    state.record = body;
    renderRecord(body);
    return body;
  }

  function renderRecord(record) {
    $('record').hidden = false;
    $('record-name').textContent = record.filename;
    $('record-size').textContent = `${bytes(record.filesize)} (${exact(record.filesize)})`;
    const date = new Date(Number(record.datetime) * 1000);
    $('record-date').textContent = Number.isFinite(date.getTime()) ? date.toLocaleString() : record.datetime;
    $('record-version').textContent = record.version;
    const list = $('record-hosts');
    list.replaceChildren();
    const uploads = record.uploads || [];
    $('record-host-count').textContent = `(${uploads.length})`;
    for (const upload of uploads) {
      const item = document.createElement('li');
      const name = document.createElement('span');
      name.className = 'host-name';
      name.textContent = upload.host_name;
      let where;
      if (/^https?:\/\//i.test(upload.url || '')) {
        where = document.createElement('a');
        where.href = upload.url;
        where.rel = 'noopener noreferrer';
      } else {
        where = document.createElement('span');
      }
      where.className = 'host-url';
      where.textContent = upload.url || '';
      item.append(name, where);
      list.append(item);
    }
    if (!uploads.length) {
      const item = document.createElement('li');
      item.className = 'muted';
      item.textContent = 'Not on any host yet: the node is still copying it.';
      list.append(item);
    }
  }

  async function onFind(event) {
    if (event) event.preventDefault();
    const message = $('download-message');
    hide(message);
    let filehash;
    try {
      filehash = readHex('find-filehash', 'filehash');
    } catch (e) {
      show(message, 'error', e.message);
      return;
    }
    $('find-button').disabled = true;
    try {
      await find(filehash);
    } catch (e) {
      $('record').hidden = true;
      state.record = null;
      show(message, 'error', e.message);
    } finally {
      $('find-button').disabled = false;
    }
  }

  async function onDownload() {
    const message = $('download-message');
    hide(message);
    const button = $('download-button');
    button.disabled = true;
    try {
      const filehash = readHex('find-filehash', 'filehash');
      const key = readHex('find-key', 'key');
      if (state.accounts && !state.token) {
        throw new Error('An access token pays for downloads: create one under “Access token” first.');
      }
      const record = state.record && state.record.filehash === filehash ? state.record : await find(filehash);
      // HEAD is free and answers what a download would, short of the charge.
      await call('HEAD', `/api/download/${filehash}?key=${key}`);
      if (state.accounts) {
        await refreshBalance();
        if (!state.tokenKnown) throw new Error(MESSAGES['invalid-token']);
        if (state.balance !== null && state.balance < record.filesize) {
          throw new Error(`Downloading this file costs at least ${bytes(record.filesize)} of credit `
            + `(twice that if the node must fetch it from a host); the token has ${bytes(state.balance)}.`);
        }
      }
      let href = url(`/api/download/${filehash}?key=${key}`);
      if (state.accounts) href += `&token=${encodeURIComponent(state.token)}`;
      const link = document.createElement('a');
      link.href = href;
      link.download = record.filename; // the node's Content-Disposition names it the same
      link.rel = 'noopener';
      document.body.append(link);
      link.click();
      link.remove();
      show(message, 'ok', `Downloading ${record.filename} (${bytes(record.filesize)}): your browser saves it.`);
      setTimeout(refreshBalance, 1500);
    } catch (e) {
      show(message, 'error', e.message);
    } finally {
      button.disabled = false;
    }
  }

  // A link made by the upload: #file=<filehash>&key=<key> fills the form and finds the file.
  function openLink() {
    const params = new URLSearchParams(window.location.hash.slice(1));
    const filehash = (params.get('file') || '').toLowerCase();
    if (!HEX64.test(filehash)) return;
    $('find-filehash').value = filehash;
    $('find-key').value = (params.get('key') || '').toLowerCase();
    $('download').scrollIntoView({ block: 'start' });
    onFind().then(() => {
      if (!$('record').hidden) $('download-button').focus();
    });
  }

  // ---- Node status ----------------------------------------------------------

  function setNodeState(online, text) {
    const element = $('node-state');
    element.dataset.state = online ? 'online' : 'offline';
    $('node-state-text').textContent = text;
  }

  function transfer(cell, used, limit, unit) {
    cell.replaceChildren();
    const value = document.createElement('span');
    value.textContent = unit(used);
    cell.append(value);
    const note = document.createElement('span');
    note.className = 'limit';
    note.textContent = limit ? `of ${unit(limit)}` : 'no limit';
    cell.append(note);
    if (limit) {
      const meter = document.createElement('meter');
      meter.min = 0;
      meter.max = limit;
      meter.value = Math.min(used, limit);
      meter.low = limit * 0.7;
      meter.high = limit * 0.9;
      meter.optimum = 0;
      meter.setAttribute('aria-label', `${unit(used)} of ${unit(limit)}`);
      cell.append(meter);
    }
  }

  function renderStatus(status) {
    const { storage, bandwidth, sync } = status;
    const share = storage.capacity ? storage.used / storage.capacity : 0;
    $('storage-text').textContent =
      `${bytes(storage.used)} of ${bytes(storage.capacity)} (${Math.round(share * 100)}%)`;
    const meter = $('storage-meter');
    meter.value = Math.min(1, share);
    meter.low = 0.7;
    meter.high = 0.9;
    meter.optimum = 0;
    $('storage-max').textContent = bytes(storage.max_file_size);
    $('max-size').textContent = bytes(storage.max_file_size);

    const none = { incoming: 0, outgoing: 0 };
    const limits = bandwidth.limits || none;
    const rateLimits = bandwidth.rate_limits || none;
    $('bw-total-in').textContent = bytes(bandwidth.total.incoming);
    $('bw-total-out').textContent = bytes(bandwidth.total.outgoing);
    transfer($('bw-month-in'), bandwidth.current.incoming, limits.incoming, bytes);
    transfer($('bw-month-out'), bandwidth.current.outgoing, limits.outgoing, bytes);
    transfer($('bw-rate-in'), (bandwidth.rate || none).incoming, rateLimits.incoming, rate);
    transfer($('bw-rate-out'), (bandwidth.rate || none).outgoing, rateLimits.outgoing, rate);

    const queue = (q, what) => (q.count ? `${q.count} ${what}${q.count === 1 ? '' : 's'} · ${bytes(q.size)}` : 'Empty');
    $('queue-cloud').textContent = queue(sync.cloud_queue, 'file');
    $('queue-chain').textContent = queue(sync.blockchain_queue, 'record');

    const chain = status.florincoin || status.datacoin || {};
    const enabled = chain.coin && chain.coin !== 'none';
    $('chain-coin').textContent = enabled ? chain.coin : 'Disabled';
    $('chain-block').textContent = enabled ? Number(chain.block).toLocaleString('en-US') : '—';
    $('chain-balance').textContent = enabled ? String(chain.balance) : '—';
    $('chain-address').textContent = chain.address || '—';
    $('chain-address').classList.toggle('mono', Boolean(chain.address));
    $('status-body').hidden = false;
    renderSelected();
  }

  let statusBusy = false;
  async function refreshStatus() {
    if (statusBusy) return;
    statusBusy = true;
    try {
      const { body } = await call('GET', '/api/status');
      state.status = body;
      renderStatus(body);
      hide($('status-message'));
      const time = new Date().toLocaleTimeString();
      $('status-updated').textContent = `Updated ${time} · refreshed every ${STATUS_INTERVAL / 1000} s`;
      setNodeState(true, 'Node online');
    } catch (e) {
      show($('status-message'), 'error', `Could not read the node status. ${e.message}`);
      setNodeState(false, e.status === 0 ? 'Node unreachable' : 'Node in trouble');
    } finally {
      statusBusy = false;
    }
  }

  function tick() {
    if (document.hidden) return;
    refreshStatus();
    if (state.token && state.tokenKnown && !state.upload) refreshBalance();
  }

  // ---- Copy buttons -----------------------------------------------------------

  async function copy(button) {
    const input = $(button.dataset.copy);
    let copied = false;
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(input.value);
        copied = true;
      } catch (e) {
        copied = false;
      }
    }
    if (!copied) {
      input.focus();
      input.select();
      try {
        copied = document.execCommand('copy');
      } catch (e) {
        copied = false;
      }
    }
    if (copied) {
      button.textContent = 'Copied';
      button.classList.add('copied');
      setTimeout(() => {
        button.textContent = 'Copy';
        button.classList.remove('copied');
      }, 1500);
      toast(`${input.labels[0] ? input.labels[0].firstChild.textContent.trim() : 'Text'} copied`);
    } else {
      input.focus();
      input.select();
      toast('Selected: press Ctrl+C (⌘C) to copy');
    }
  }

  // ---- Wiring -------------------------------------------------------------------

  function wire() {
    const input = $('file-input');
    input.addEventListener('change', () => pickFile(input.files[0]));
    const zone = $('dropzone');
    for (const name of ['dragenter', 'dragover']) {
      zone.addEventListener(name, (event) => {
        event.preventDefault();
        zone.classList.add('dragging');
      });
    }
    for (const name of ['dragleave', 'drop']) {
      zone.addEventListener(name, () => zone.classList.remove('dragging'));
    }
    zone.addEventListener('drop', (event) => {
      event.preventDefault();
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) pickFile(files[0]);
    });
    // A file dropped beside the zone must not make the browser leave the page.
    window.addEventListener('dragover', (event) => event.preventDefault());
    window.addEventListener('drop', (event) => event.preventDefault());

    $('upload-button').addEventListener('click', startUpload);
    $('cancel-button').addEventListener('click', () => state.upload && state.upload.abort());
    $('restart-button').addEventListener('click', startOver);
    $('find-form').addEventListener('submit', onFind);
    $('download-button').addEventListener('click', onDownload);
    $('token-new').addEventListener('click', newToken);
    $('token-use-form').addEventListener('submit', useExistingToken);
    $('token-forget').addEventListener('click', forgetToken);
    $('balance-refresh').addEventListener('click', () => {
      hide($('token-message'));
      refreshBalance();
    });
    $('redeem-form').addEventListener('submit', redeem);
    for (const button of document.querySelectorAll('button[data-copy]')) {
      button.addEventListener('click', () => copy(button));
    }
    $('result-open').addEventListener('click', (event) => {
      event.preventDefault();
      const link = $('result-link').value;
      if (window.location.href === link) openLink();
      else window.location.href = link;
    });
    for (const link of document.querySelectorAll('a[href="api/status"]')) link.href = url('/api/status');
    window.addEventListener('hashchange', openLink);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) tick();
    });
  }

  function start() {
    wire();
    state.token = loadToken();
    renderToken();
    loadPrices().then(refreshBalance);
    refreshStatus();
    setInterval(tick, STATUS_INTERVAL);
    openLink();
  }

  start();
})();
