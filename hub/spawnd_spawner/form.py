"""The options form: the env and profile names the daemon offers a user."""

import html

from .errors import SpawndError


def _pick(items, name):
    """The item of that name, or the default one when name is empty."""
    for it in items or []:
        if (name and it.get("name") == name) or (not name and it.get("default")):
            return it
    return None


def _keys(spawner):
    """The user_options keys of the env and profile (env_option,
    profile_option; '' = not chosen by the user)."""
    if spawner is None:
        return {"env": "env", "profile": "profile"}
    return {"env": spawner.env_option, "profile": spawner.profile_option}


def _names_from_form(formdata, spawner=None):
    """Keep only the names the form offers; the daemon checks them."""
    out = {}
    for key in _keys(spawner).values():
        if not key:
            continue
        val = (formdata.get(key) or [""])[0].strip()
        if val:
            out[key] = val
    return out


async def _render_options_form(spawner):
    """An options form with the envs and profiles the daemon offers the user;
    empty (no form) when there is nothing to choose."""
    try:
        opts = await spawner.daemon_options()
    except SpawndError as e:
        spawner.log.warning("No options form for %s: %s", spawner._log_name, e)
        return ""
    keys = _keys(spawner)
    envs = opts.get("envs") or [] if keys["env"] else []
    profiles = opts.get("profiles") or [] if keys["profile"] else []
    if len(envs) <= 1 and len(profiles) <= 1:
        return ""

    def select(name, label, items, describe):
        rows = []
        for it in items:
            sel = " selected" if it.get("default") else ""
            rows.append(
                f'<option value="{html.escape(it["name"])}"{sel}>{html.escape(describe(it))}</option>'
            )
        return (
            f'<div class="form-group"><label for="spawnd-{name}">{label}</label>'
            f'<select class="form-control" name="{name}" id="spawnd-{name}">{"".join(rows)}</select></div>'
        )

    def env_text(e):
        text = e["name"]
        if e.get("description"):
            text += " - " + e["description"]
        return text

    def profile_text(p):
        parts = [p["name"]]
        if p.get("memory_mb"):
            parts.append(f"{p['memory_mb']} MiB")
        if p.get("cpus"):
            parts.append(f"{p['cpus']:g} CPU")
        return ", ".join(parts)

    form = ""
    if len(envs) > 1:
        form += select(keys["env"], "Environment", envs, env_text)
    if len(profiles) > 1:
        form += select(keys["profile"], "Resources", profiles, profile_text)
    return form
