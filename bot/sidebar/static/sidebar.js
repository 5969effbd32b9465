/* Sidebar page logic: JS-SDK handshake, current customer, tags, tasks, quick replies. No framework:
 * the whole page must stay small and start fast inside WeCom's webview on a phone. Text is always set
 * with textContent (never innerHTML), so customer data cannot inject markup. */
(function () {
  "use strict";
  var boot = JSON.parse(document.getElementById("boot").textContent);
  var wx = window.sopbotWx;
  var $ = function (id) { return document.getElementById(id); };
  var current = null; // external_userid of the customer on screen

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "on") Object.keys(attrs.on).forEach(function (e) { node.addEventListener(e, attrs.on[e]); });
      else if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) node.setAttribute(k, attrs[k]);
    });
    return add(node, Array.prototype.slice.call(arguments, 2));
  }

  // Children may be nodes, strings, nested arrays or null (skipped): what el() and put() accept.
  function add(node, kids) {
    kids.forEach(function (x) {
      if (Array.isArray(x)) add(node, x);
      else if (x !== null && x !== undefined && x !== false) node.appendChild(typeof x === "string" ? document.createTextNode(x) : x);
    });
    return node;
  }

  function put(node) {
    node.textContent = "";
    return add(node, Array.prototype.slice.call(arguments, 1));
  }

  function status(text, isError) {
    var s = $("status");
    if (!s) return;
    s.textContent = text || "";
    s.hidden = !text;
    s.className = isError ? "status err" : "status";
  }

  var toastTimer = null;
  function toast(text) {
    var t = $("toast");
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { t.hidden = true; }, 2500);
  }

  function api(method, path, body) {
    var opts = { method: method, credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (method !== "GET") {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = boot.csrf;
      opts.body = JSON.stringify(body || {});
    }
    return fetch(path, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (r.status === 401 && j.login) { location.reload(); }
        if (!r.ok) { var e = new Error(j.error || ("请求失败（" + r.status + "）")); e.status = r.status; throw e; }
        return j;
      });
    });
  }

  function invoke(name, args) {
    return new Promise(function (resolve, reject) {
      wx.invoke(name, args || {}, function (res) {
        res = res || {};
        if (res.err_msg === name + ":ok") resolve(res);
        else reject(new Error(res.err_msg || (name + ":fail")));
      });
    });
  }

  /* ---- parts (rendered scripts) ---- */
  var PART_LABEL = { image: "图片", link: "链接", file: "文件", video: "视频", miniprogram: "小程序" };
  function partsView(parts) {
    return parts.map(function (p) {
      if (p.type === "text") return el("p", { "class": "text", text: p.text });
      return el("p", { "class": "part" }, p.img ? el("img", { src: p.img, alt: "" }) : null,
        "[" + (PART_LABEL[p.type] || p.type) + "] " + (p.title || "") + (p.desc ? " · " + p.desc : ""));
    });
  }

  function sendMessages(path) {
    return api("POST", path).then(function (res) {
      var chain = Promise.resolve();
      res.messages.forEach(function (m, i) {
        var args = Object.assign({ enterChat: i === 0 }, m);
        chain = chain.then(function () { return invoke("sendChatMessage", args); });
      });
      return chain.then(function () { return res.messages.length; });
    });
  }

  /* ---- tabs ---- */
  function showTab(name) {
    document.querySelectorAll("[role=tab]").forEach(function (b) {
      b.setAttribute("aria-selected", b.getAttribute("data-tab") === name ? "true" : "false");
    });
    document.querySelectorAll("[role=tabpanel]").forEach(function (p) { p.hidden = p.id !== "tab-" + name; });
    if (name === "replies" && !$("reply-list").childNodes.length) searchReplies("");
  }

  /* ---- customer ---- */
  function renderProfile(data) {
    var c = data.customer;
    $("c-name").textContent = c.name;
    $("avatar").textContent = (c.name || "客").slice(0, 1);
    $("c-sub").textContent = [c.stage_label, c.corp_name, c.gender].filter(Boolean).join(" · ");
    $("c-score-n").textContent = c.score;
    $("c-score").hidden = false;
    var follows = data.follows.map(function (f) {
      return el("div", { "class": "card" },
        el("div", { "class": "row" }, el("b", { text: f.name + (f.me ? "（我）" : "") }), el("span", { "class": "due", text: f.ended })),
        el("dl", null,
          el("dt", { text: "渠道" }), el("dd", { text: f.channel || "—" }),
          el("dt", { text: "添加时间" }), el("dd", { text: f.added_at || "—" }),
          el("dt", { text: "添加方式" }), el("dd", { text: (f.add_way || "—") + (f.added_by ? "（" + f.added_by + "）" : "") }),
          f.remark ? [el("dt", { text: "备注" }), el("dd", { text: f.remark })] : null));
    });
    put($("tab-profile"), 
      el("h2", { text: "客户" }),
      el("div", { "class": "card" }, el("dl", null,
        el("dt", { text: "阶段" }), el("dd", { id: "c-stage", text: c.stage_label + (c.lost ? "（已流失）" : "") }),
        el("dt", { text: "评分" }), el("dd", { text: String(c.score) }),
        el("dt", { text: "首次添加" }), el("dd", { text: c.created_at }))),
      el("h2", { text: "跟进人" }), follows);
  }

  function renderTags(data) {
    var groups = data.tag_groups.map(function (g) {
      return el("div", { "class": "card tagcard" }, el("b", { text: g.group }), g.tags.map(function (t) {
        return el("p", { "class": "tagline" }, el("span", { "class": "chip", text: t.name }),
          el("span", { "class": "why", text: t.source + " · " + t.reason + " · " + t.applied_at }));
      }));
    });
    var on = {};
    data.tag_groups.forEach(function (g) { g.tags.forEach(function (t) { on[t.tag] = true; }); });
    var lib = data.tag_library.slice();
    data.tag_groups.forEach(function (g) { // tags applied but not (yet) in the synced library stay removable
      var found = lib.filter(function (l) { return l.group === g.group; })[0];
      if (!found) { found = { group: g.group, tags: [] }; lib.push(found); }
      g.tags.forEach(function (t) { if (found.tags.indexOf(t.name) < 0) found.tags = found.tags.concat([t.name]); });
    });
    var note = el("input", { type: "text", id: "tag-note", placeholder: "原因（可选）：如 电话沟通确认有预算", maxlength: "200" });
    var editor = el("form", { "class": "card editor", id: "tag-editor" },
      el("b", { text: "编辑标签" }),
      lib.map(function (g) {
        return el("div", null, el("p", { "class": "hint", text: g.group }), g.tags.map(function (n) {
          var key = g.group + ":" + n;
          return el("label", null, el("input", { type: "checkbox", value: key, checked: on[key] ? "checked" : null }), n);
        }));
      }), note,
      el("div", { "class": "actions" }, el("button", { "class": "btn", type: "submit", text: "保存标签" })));
    editor.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var add = [], remove = [];
      editor.querySelectorAll("input[type=checkbox]").forEach(function (box) {
        if (box.checked && !on[box.value]) add.push(box.value);
        if (!box.checked && on[box.value]) remove.push(box.value);
      });
      if (!add.length && !remove.length) { toast("标签没有变化"); return; }
      api("POST", "/sidebar/api/customers/" + encodeURIComponent(current) + "/tags", { add: add, remove: remove, note: note.value })
        .then(function (res) { data.tag_groups = res.tag_groups; renderTags(data); toast("标签已保存"); })
        .catch(function (e) { toast(e.message); });
    });
    put($("tab-tags"), el("h2", { text: "当前标签" }),
      groups.length ? groups : el("p", { "class": "empty", text: "还没有标签" }), editor);
  }

  function taskCard(t, onGone) {
    var card = el("article", { "class": "card task" + (t.overdue ? " overdue" : ""), "data-task": String(t.id) });
    function finish(kind) {
      return api("POST", "/sidebar/api/tasks/" + t.id + "/" + kind).then(function () {
        card.remove(); onGone(); toast(kind === "done" ? "任务已完成" : "任务已跳过");
      });
    }
    var buttons = el("div", { "class": "actions" },
      t.preview && current ? el("button", { "class": "btn", "data-act": "send", text: "发送", on: { click: function (ev) {
        ev.target.disabled = true;
        sendMessages("/sidebar/api/tasks/" + t.id + "/messages")
          .then(function () { return finish("done"); })
          .catch(function (e) { ev.target.disabled = false; toast("未发送：" + e.message); });
      } } }) : null,
      el("button", { "class": "btn ghost", "data-act": "done", text: "已完成", on: { click: function () { finish("done").catch(function (e) { toast(e.message); }); } } }),
      el("button", { "class": "btn ghost", "data-act": "skip", text: "跳过", on: { click: function () { finish("skip").catch(function (e) { toast(e.message); }); } } }));
    add(card, [
      el("div", { "class": "row" }, el("b", { text: t.preview ? t.preview.title : t.script_id }),
        el("span", { "class": "due", text: (t.overdue ? "已逾期 · " : "") + t.due_at })),
      t.preview ? partsView(t.preview.parts) : el("p", { "class": "error", text: t.error }), buttons]);
    return card;
  }

  function renderTasks(data) {
    var left = data.tasks.length;
    function count() { $("task-count").textContent = String(left); $("task-count").hidden = !left; }
    count();
    var cards = data.tasks.map(function (t) { return taskCard(t, function () { left -= 1; count(); }); });
    put($("tab-tasks"), el("h2", { text: "待办 SOP 任务" }),
      cards.length ? cards : el("p", { "class": "empty", text: "该客户暂无待办任务" }));
  }

  function renderTimeline(data) {
    put($("tab-timeline"), el("h2", { text: "客户动态" }), data.timeline.length ? data.timeline.map(function (t) {
      return el("div", { "class": "tl" }, el("b", { text: t.label }), t.text ? " " + t.text : "",
        el("br"), el("small", { text: t.at + (t.by ? " · " + t.by : "") }));
    }) : el("p", { "class": "empty", text: "暂无动态" }));
  }

  function loadCustomer(ext) {
    current = ext;
    status("正在加载客户资料…");
    return api("GET", "/sidebar/api/customers/" + encodeURIComponent(ext)).then(function (data) {
      status("");
      renderProfile(data); renderTags(data); renderTasks(data); renderTimeline(data);
      if (data.tasks.length) showTab("tasks");
      document.body.setAttribute("data-loaded", "customer");
    }).catch(function (e) { status(e.message, true); document.body.setAttribute("data-loaded", "error"); });
  }

  function loadGroup(chatId) {
    return api("GET", "/sidebar/api/groups/" + encodeURIComponent(chatId)).then(function (g) {
      status("");
      $("c-name").textContent = g.name;
      $("c-sub").textContent = g.members + " 位成员";
      put($("tab-profile"), el("h2", { text: "群里我跟进的客户" }), g.customers.length ? g.customers.map(function (c) {
        return el("div", { "class": "card row" }, el("b", { text: c.name }), el("span", { "class": "due", text: c.stage_label }));
      }) : el("p", { "class": "empty", text: "群里没有您跟进的客户" }));
      document.body.setAttribute("data-loaded", "group");
    }).catch(function (e) { status(e.message, true); });
  }

  /* ---- quick replies ---- */
  var searchSeq = 0;
  function searchReplies(q) {
    var seq = ++searchSeq;
    var url = "/sidebar/api/scripts?q=" + encodeURIComponent(q) + (current ? "&customer=" + encodeURIComponent(current) : "");
    api("GET", url).then(function (res) {
      if (seq !== searchSeq) return; // a newer search is on its way: keep the screen in step with the box
      put($("reply-list"), res.items.length ? res.items.map(function (s) {
        return el("article", { "class": "card reply", "data-script": s.script_id },
          el("div", { "class": "row" }, el("b", { text: s.title }), el("span", { "class": "due", text: s.category })),
          s.error ? el("p", { "class": "error", text: s.error }) : partsView(s.parts),
          current && !s.error ? el("div", { "class": "actions" }, el("button", { "class": "btn", "data-act": "send", text: "发送", on: { click: function (ev) {
            ev.target.disabled = true;
            sendMessages("/sidebar/api/customers/" + encodeURIComponent(current) + "/scripts/" + encodeURIComponent(s.script_id) + "/messages")
              .then(function (n) { toast("已发送 " + n + " 条"); })
              .catch(function (e) { toast("未发送：" + e.message); })
              .then(function () { ev.target.disabled = false; });
          } } })) : null);
      }) : el("p", { "class": "empty", text: "没有找到相关话术" }));
    }).catch(function (e) { toast(e.message); });
  }

  /* ---- JS-SDK handshake ---- */
  function signature() {
    var here = location.href.split("#")[0];
    if (boot.jssdk && boot.jssdk.url === here) return Promise.resolve(boot.jssdk);
    return api("GET", "/sidebar/api/jssdk?url=" + encodeURIComponent(here));
  }

  function withContext() {
    return invoke("getContext").then(function (ctx) {
      if (ctx.entry === "group_chat_tools") return invoke("getCurExternalChat").then(function (r) { return loadGroup(r.chatId); });
      if (["single_chat_tools", "contact_profile", "single_kf_tools"].indexOf(ctx.entry) >= 0) {
        return invoke("getCurExternalContact").then(function (r) { return loadCustomer(r.userId); });
      }
      status("请在与客户的聊天窗口中，从工具栏打开侧边栏。");
    });
  }

  function startMain() {
    document.querySelectorAll("[role=tab]").forEach(function (b) {
      b.addEventListener("click", function () { showTab(b.getAttribute("data-tab")); });
    });
    var timer = null;
    $("reply-q").addEventListener("input", function (ev) {
      clearTimeout(timer);
      timer = setTimeout(function () { searchReplies(ev.target.value.trim()); }, 250);
    });
    $("reply-form").addEventListener("submit", function (ev) { ev.preventDefault(); searchReplies($("reply-q").value.trim()); });
    if (!wx) { status("请在企业微信的聊天工具栏中打开本页面（未检测到企业微信 JS-SDK）。", true); return; }
    signature().then(function (sig) {
      return new Promise(function (resolve, reject) {
        var agent = Object.assign({}, sig.agentConfig, {
          success: resolve,
          fail: function (res) { reject(new Error("企业微信鉴权失败：" + ((res && res.errMsg) || "未知错误"))); }
        });
        if (typeof wx.config === "function") {
          wx.config(sig.config);
          wx.ready(function () { wx.agentConfig(agent); });
          wx.error(function (res) { reject(new Error("企业微信鉴权失败：" + ((res && res.errMsg) || "未知错误"))); });
        } else {
          wx.agentConfig(agent);
        }
      });
    }).then(withContext).catch(function (e) { status(e.message, true); });
  }

  function startTasks() {
    document.querySelectorAll("article[data-task]").forEach(function (card) {
      card.addEventListener("click", function (ev) {
        var act = ev.target.getAttribute && ev.target.getAttribute("data-act");
        if (act !== "done" && act !== "skip") return;
        ev.target.disabled = true;
        api("POST", "/sidebar/api/tasks/" + card.getAttribute("data-task") + "/" + act).then(function () {
          card.remove(); toast(act === "done" ? "任务已完成" : "任务已跳过");
        }).catch(function (e) { ev.target.disabled = false; toast(e.message); });
      });
    });
  }

  if (boot.page === "main") startMain(); else if (boot.page === "tasks") startTasks();
})();
