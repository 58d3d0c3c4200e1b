"""The words of the alerts, in French for the town's staff: what happened, where, when (in the
town's time zone, said so) and what to do. Composed when the alert is written, so that what
waits in the database is exactly what will be sent, whenever the link comes back.
"""

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

PRODUCT = "Réverbère"

# kind -> (what it is, what to do): for people who are not programmers.
KIND_WORDS: dict[str, tuple[str, str]] = {
    "dark_at_night": (
        "lampe éteinte la nuit : la rue est dans le noir",
        "Intervenir dès que possible : vérifier la lampe, son fusible et le disjoncteur "
        "de l'armoire d'éclairage.",
    ),
    "lit_by_day": (
        "lampe allumée en plein jour",
        "À traiter dans la journée : vérifier l'horloge ou la cellule crépusculaire de "
        "l'armoire d'éclairage.",
    ),
    "silent": (
        "capteur muet : la passerelle n'en reçoit plus rien",
        "Vérifier l'alimentation du capteur et sa liaison radio ; si toute la rue est muette, "
        "vérifier la passerelle et son point d'accès.",
    ),
    "counter_reset": (
        "compteur d'énergie remis à zéro",
        "Vérifier si le compteur a été changé ou le capteur redémarré ; rien à faire si "
        "c'était prévu.",
    ),
    "stuck": (
        "capteur bloqué sur la même valeur",
        "Vérifier le capteur et son branchement.",
    ),
    "drift": (
        "consommation d'une lampe en hausse lente",
        "Prévoir un contrôle de la lampe (vieillissement, ballast) lors d'une prochaine tournée.",
    ),
    "off_schedule": (
        "consommation hors des heures d'ouverture",
        "Vérifier ce qui reste allumé ou en marche dans le bâtiment en dehors des horaires.",
    ),
    "unusual": (
        "consommation inhabituelle",
        "Regarder la courbe de consommation ; intervenir si l'écart n'a pas d'explication.",
    ),
    "lit_in_switch_off": (
        "lampe allumée pendant l'extinction de nuit",
        "Vérifier le programme d'extinction de l'horloge de l'armoire d'éclairage.",
    ),
    "not_dimmed": (
        "abaissement de puissance non appliqué",
        "Vérifier le programme d'abaissement de la lampe ou de son armoire.",
    ),
    "wrong_time": (
        "consommation à une heure inhabituelle",
        "Vérifier ce qui fonctionne dans le bâtiment à cette heure-là.",
    ),
    "spike": (
        "pic de consommation",
        "Regarder ce qui a été mis en marche ; vérifier qu'aucun appareil n'est en défaut.",
    ),
    "dip": (
        "creux de consommation",
        "Vérifier qu'une installation du bâtiment ne s'est pas arrêtée (chauffage, pompe).",
    ),
    "dropout": (
        "compteur muet : la consommation lue est presque nulle",
        "Vérifier le compteur et son capteur ; vérifier aussi l'alimentation du bâtiment.",
    ),
    "stuck_meter": (
        "compteur bloqué sur la même valeur",
        "Vérifier le compteur et le branchement de son capteur.",
    ),
}


def kind_words(kind: str) -> tuple[str, str]:
    return KIND_WORDS.get(kind, (kind, "Regarder l'événement dans la console de la passerelle."))


def local_time(t: float, tz: str) -> str:
    """``07/12/2026 à 21:14`` in the town's zone (the caller says which, once per message)."""
    return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%d/%m/%Y à %H:%M")


def zone_note(tz: str) -> str:
    return f"Heures locales ({tz})."


@dataclass(frozen=True)
class EventFacts:
    """What a message says about one anomaly event (a row of ``anomalies``)."""

    id: int
    node: str
    channel: str
    kind: str
    start: float
    end: float | None
    score: float
    reason: str


def opening(ev: EventFacts, tz: str, urgent: bool) -> tuple[str, str]:
    """Subject and text of the message that an event began."""
    what, todo = kind_words(ev.kind)
    tag = "URGENT" if urgent else "Alerte"
    subject = f"[{PRODUCT}] {tag} : {what} ({ev.node})"
    lines = [
        "Bonjour,",
        "",
        f"La passerelle {PRODUCT} a détecté une anomalie sur le capteur {ev.node} :",
        f"  {what}",
        f"  depuis le {local_time(ev.start, tz)}",
    ]
    if ev.end is not None:
        lines.append(f"  terminée le {local_time(ev.end, tz)}")
    lines += [
        "",
        f"Que faire : {todo}",
        "",
        f"Détail technique : {ev.reason} (mesure « {ev.channel} », score {ev.score:.2f}, "
        f"événement n° {ev.id}).",
        zone_note(tz),
    ]
    if urgent and ev.end is None:
        lines.append("Un message suivra quand l'anomalie aura cessé.")
    lines.append(
        "Tant que cette anomalie dure, vous ne recevrez pas d'autre message pour ce capteur "
        "et ce type d'anomalie."
    )
    return subject, "\n".join(lines) + "\n"


def closing(ev: EventFacts, tz: str) -> tuple[str, str]:
    """Subject and text of the message that an urgent event has ended."""
    what, _ = kind_words(ev.kind)
    subject = f"[{PRODUCT}] Terminé : {what} ({ev.node})"
    lines = [
        "Bonjour,",
        "",
        f"L'anomalie signalée sur le capteur {ev.node} a cessé :",
        f"  {what}",
        f"  du {local_time(ev.start, tz)} au {local_time(ev.end or ev.start, tz)}",
        "",
        "Rien d'autre à faire si une intervention a eu lieu ; sinon, vérifier sur place à la "
        "prochaine tournée.",
        "",
        f"Événement n° {ev.id}. {zone_note(tz)}",
    ]
    return subject, "\n".join(lines) + "\n"


def digest(items: list[tuple[EventFacts, str]], day: float, tz: str) -> tuple[str, str]:
    """Subject and text of the daily digest: ``items`` are (event, why it waited)."""
    subject = f"[{PRODUCT}] Récapitulatif du {local_time(day, tz)[:10]} : {len(items)} anomalie" + (
        "s" if len(items) > 1 else ""
    )
    lines = [
        "Bonjour,",
        "",
        f"Voici les anomalies des dernières 24 heures qui pouvaient attendre ({len(items)}) :",
        "",
    ]
    for ev, note in items:
        what, todo = kind_words(ev.kind)
        span = f"depuis le {local_time(ev.start, tz)}"
        if ev.end is not None:
            span = f"du {local_time(ev.start, tz)} au {local_time(ev.end, tz)}"
        lines.append(f"- {ev.node} : {what}, {span}{note}")
        lines.append(f"  Que faire : {todo}")
    lines += ["", zone_note(tz)]
    return subject, "\n".join(lines) + "\n"
