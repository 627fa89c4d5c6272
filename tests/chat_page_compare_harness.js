// Runs chat_page.html's script in node against a live server that serves several models, with a stub
// DOM: picks "compare all" in the model menu, asks one question, and prints JSON: the menu's options,
// the label, and the compare row's columns (each column's model label and answer text and class).
//   node tests/chat_page_compare_harness.js http://127.0.0.1:PORT 07_distill_quant/chat_page.html
const fs = require("fs");
const [base, pagePath] = process.argv.slice(2);
const realFetch = fetch;
globalThis.fetch = (url, opts) => realFetch(new URL(url, base), opts);

class Element {
  constructor(id) { this.id = id; this.children = []; this.parent = null; this.value = ""; this.textContent = "";
                    this.className = ""; this.placeholder = ""; this.hidden = true; }
  appendChild(c) { c.parent = this; this.children.push(c); return c; }
  set textContent(t) { this._text = t; if (t === "") this.children = []; }
  get textContent() { return this._text; }
}
const elements = {};
globalThis.document = {
  getElementById: (id) => elements[id] || (elements[id] = new Element(id)),
  createElement: (tag) => { const e = new Element(null); e.tag = tag; return e; },
};
elements.temperature = Object.assign(new Element("temperature"), {value: "0"});
const html = fs.readFileSync(pagePath, "utf8");
eval(html.slice(html.indexOf("<script>") + 8, html.indexOf("</script>")));

const until = async (cond) => { for (let i = 0; i < 400 && !cond(); i++) await new Promise(r => setTimeout(r, 25)); };
(async () => {
  const $ = (id) => document.getElementById(id);
  await until(() => $("model").textContent);
  const options = $("pick").children.map(o => o.value);
  $("pick").value = "*";
  $("pick").onchange();
  $("text").value = "Where does Noin Marora live?";
  await $("form").onsubmit({preventDefault() {}});
  const row = $("log").children.find(c => c.className === "row");
  const columns = row.children.map(col => ({model: col.children[0].textContent,
                                             cls: col.children[1].className, text: col.children[1].textContent}));
  console.log(JSON.stringify({options, shown: !$("pick_label").hidden, label: $("model").textContent, columns}));
})();
