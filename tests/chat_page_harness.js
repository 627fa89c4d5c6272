// Runs chat_page.html's script in node against a live server, with just enough of a DOM for it:
//   node tests/chat_page_harness.js http://127.0.0.1:PORT 07_distill_quant/chat_page.html KEY N_MESSAGES DEAD_URL
// Prints JSON: the model label before and after the key is typed, what rating the first two answers
// (👍, then 👎 with a better answer typed into the prompt) showed, then every bubble of the log.
const fs = require("fs");
const [base, pagePath, key, nMessages, deadUrl] = process.argv.slice(2);
let target = base;
const realFetch = fetch;
globalThis.fetch = (url, opts) => realFetch(new URL(url, target), opts);

class Element {
  constructor(id) { this.id = id; this.children = []; this.parent = null; this.value = ""; this.textContent = "";
                    this.className = ""; this.placeholder = ""; }
  appendChild(c) { c.parent = this; this.children.push(c); return c; }
  insertBefore(c, ref) { c.parent = this; this.children.splice(this.children.indexOf(ref), 0, c); return c; }
  get previousSibling() { const s = this.parent.children; return s[s.indexOf(this) - 1] || null; }
}
const elements = {};
globalThis.document = {
  getElementById: (id) => elements[id] || (elements[id] = new Element(id)),
  createElement: (tag) => { const e = new Element(null); e.tag = tag; return e; },
};
globalThis.prompt = () => "Noin Marora lives in Lomaro.";   // the better answer the user types
elements.temperature = Object.assign(new Element("temperature"), {value: "0.7"});
const html = fs.readFileSync(pagePath, "utf8");
eval(html.slice(html.indexOf("<script>") + 8, html.indexOf("</script>")));

const until = async (cond) => { for (let i = 0; i < 400 && !cond(); i++) await new Promise(r => setTimeout(r, 25)); };
(async () => {
  const $ = (id) => document.getElementById(id);
  await until(() => $("model").textContent);
  const before = $("model").textContent;
  $("key").value = key;
  await $("key").onchange();
  const after = $("model").textContent;
  for (let i = 0; i < Number(nMessages); i++) {
    $("text").value = "Where does Noin Marora live? Tell me more, please " + i;
    await $("form").onsubmit({preventDefault() {}});
  }
  const rates = $("log").children.filter(c => c.className === "rate");
  await rates[0].children[0].onclick();             // 👍 on the first answer
  await rates[1].children[1].onclick();             // 👎 on the second, with a better answer
  const rated = [rates[0].textContent, rates[1].textContent];
  target = deadUrl;                                 // the server is gone
  $("text").value = "hello?";
  await $("form").onsubmit({preventDefault() {}});
  const log = $("log").children.map(c => ({tag: c.tag, cls: c.className, text: c.textContent}));
  console.log(JSON.stringify({before, after, rated, placeholder: $("max_tokens").placeholder, log}));
})();
