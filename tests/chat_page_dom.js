// The stub DOM both chat-page harnesses run chat_page.html's own script in (node, no browser): just the
// elements, properties and methods the page uses, and a fetch that resolves the page's relative URLs
// against a live server (`setTarget` points it elsewhere, e.g. at a dead port).
const fs = require("fs");

class Element {
  constructor(id) { this.id = id; this.children = []; this.parent = null; this.value = ""; this._text = "";
                    this.className = ""; this.placeholder = ""; this.hidden = true; }
  appendChild(c) { c.parent = this; this.children.push(c); return c; }
  insertBefore(c, ref) { c.parent = this; this.children.splice(this.children.indexOf(ref), 0, c); return c; }
  get previousSibling() { const s = this.parent.children; return s[s.indexOf(this) - 1] || null; }
  set textContent(t) { this._text = t; if (t === "") this.children = []; }   // as the DOM: clears children
  get textContent() { return this._text; }
}

// Load the page's script against `base`; `values` presets inputs (e.g. {temperature: "0"}).
function loadPage(pagePath, base, values) {
  let target = base;
  const realFetch = fetch;
  globalThis.fetch = (url, opts) => realFetch(new URL(url, target), opts);
  const elements = {};
  globalThis.document = {
    getElementById: (id) => elements[id] || (elements[id] = new Element(id)),
    createElement: (tag) => { const e = new Element(null); e.tag = tag; return e; },
  };
  for (const [id, value] of Object.entries(values)) elements[id] = Object.assign(new Element(id), {value});
  const html = fs.readFileSync(pagePath, "utf8");
  (0, eval)(html.slice(html.indexOf("<script>") + 8, html.indexOf("</script>")));   // global scope, as a page
  return {
    $: (id) => document.getElementById(id),
    setTarget: (url) => { target = url; },
    until: async (cond) => { for (let i = 0; i < 400 && !cond(); i++) await new Promise(r => setTimeout(r, 25)); },
  };
}

module.exports = {loadPage};
