// Runs chat_page.html's script in node against a live server, in the stub DOM of chat_page_dom.js:
//   node tests/chat_page_harness.js http://127.0.0.1:PORT 07_distill_quant/chat_page.html KEY N_MESSAGES DEAD_URL
// Prints JSON: the model label before and after the key is typed, what rating the first two answers
// (👍, then 👎 with a better answer typed into the prompt) showed, then every bubble of the log.
const {loadPage} = require("./chat_page_dom.js");
const [base, pagePath, key, nMessages, deadUrl] = process.argv.slice(2);
globalThis.prompt = () => "Noin Marora lives in Lomaro.";   // the better answer the user types
const {$, setTarget, until} = loadPage(pagePath, base, {temperature: "0.7"});

(async () => {
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
  setTarget(deadUrl);                               // the server is gone
  $("text").value = "hello?";
  await $("form").onsubmit({preventDefault() {}});
  const log = $("log").children.map(c => ({tag: c.tag, cls: c.className, text: c.textContent}));
  console.log(JSON.stringify({before, after, rated, placeholder: $("max_tokens").placeholder, log}));
})();
