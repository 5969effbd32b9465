/*
 * JS-SDK shim for the sidebar. We never load Tencent's file from a CDN at run time: corp networks
 * often cannot reach one, and a third-party script would need a CSP exception.
 *
 * Production: download the official 企业微信 JS-SDK (jweixin-1.2.0.js or newer, from WeCom's
 * "JS-SDK 说明" page) and either
 *   - put it next to this file as bot/sidebar/static/jweixin.js and set
 *     SOPBOT_JSSDK_URL=/sidebar/static/jweixin.js, or
 *   - serve it from your own host and set SOPBOT_JSSDK_URL=https://static.example.com/jweixin.js
 *     (that origin is then allowed in script-src).
 * The page loads SOPBOT_JSSDK_URL (when set) before this file; the WeCom client may also inject `wx`
 * itself. Either way this shim only exposes what is there as window.sopbotWx; without it the page
 * explains that it must be opened from WeCom's chat toolbar.
 */
(function () {
  "use strict";
  var wx = window.wx || window.jWeixin || null;
  window.sopbotWx = wx && typeof wx.invoke === "function" ? wx : null;
})();
