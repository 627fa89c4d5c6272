// Runs chat_page.html's script in node against a live server that serves several models, in the stub
// DOM of chat_page_dom.js: picks "compare all" in the model menu, asks one question, and prints JSON:
// the menu's options, the label, and the compare row's columns (each column's model, answer, class).
//   node tests/chat_page_compare_harness.js http://127.0.0.1:PORT 07_distill_quant/chat_page.html
const {loadPage} = require("./chat_page_dom.js");
const [base, pagePath] = process.argv.slice(2);
const {$, until} = loadPage(pagePath, base, {temperature: "0"});

(async () => {
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
