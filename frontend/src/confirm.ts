// A yes/no question in a modal dialog (window.confirm cannot be styled and blocks the page's events).
import { byId, openDialog } from "./dom";

export function confirmDialog(question: string, yes = "Delete"): Promise<boolean> {
  const dialog = byId<HTMLDialogElement>("confirm");
  const ok = byId<HTMLButtonElement>("confirm-ok");
  byId("confirm-text").textContent = question;
  ok.textContent = yes;
  return new Promise((resolve) => {
    const answer = (value: boolean) => () => {
      ok.onclick = cancel.onclick = dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const cancel = byId<HTMLButtonElement>("confirm-cancel");
    ok.onclick = answer(true);
    cancel.onclick = answer(false);
    dialog.onclose = answer(false);
    openDialog(dialog, cancel);
  });
}
