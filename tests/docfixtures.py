"""A folder of a user's own documents, generated from known text: three PDFs (fpdf2, running
headers and page-number footers included), two HTML pages (navigation, scripts and footers around
the article), one Word file (python-docx) and one markdown file.

Every fact sits on a known page and under a known heading, with a question whose answer is a
short string, so extraction, citations and `kinject ask` can be checked against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Fact:
    file: str
    page: int
    section: str
    sentence: str
    question: str
    answer: str


def _f(file: str, page: int, section: str, sentence: str, question: str, answer: str) -> Fact:
    return Fact(file, page, section, sentence, question, answer)


FACTS = [
    _f("pump_manual.pdf", 1, "Safety", "The AquaLift 7 pump must be primed with 2.5 litres of water before its first use.",
       "How many litres of water are needed to prime the AquaLift 7 pump?", "2.5"),
    _f("pump_manual.pdf", 1, "Safety", "The AquaLift 7 pump weighs 14 kilograms without its hoses.",
       "How much does the AquaLift 7 pump weigh?", "14"),
    _f("pump_manual.pdf", 2, "Installation › Mounting", "The maximum delivery head of the AquaLift 7 pump is 38 metres.",
       "What is the maximum delivery head of the AquaLift 7 pump?", "38"),
    _f("pump_manual.pdf", 2, "Installation › Mounting", "The impeller of the AquaLift 7 pump is made of bronze.",
       "What material is the impeller of the AquaLift 7 pump made of?", "bronze"),
    _f("pump_manual.pdf", 3, "Maintenance", "The seal kit of the AquaLift 7 pump has the part number SK-4471.",
       "What is the part number of the AquaLift 7 seal kit?", "SK-4471"),
    _f("pump_manual.pdf", 3, "Maintenance", "The warranty of the AquaLift 7 pump lasts 5 years from the date of purchase.",
       "How long does the AquaLift 7 pump warranty last?", "5 years"),
    _f("boiler_guide.pdf", 1, "", "On the Thermona boiler, the error code E19 means that the gas valve is closed.",
       "What does error code E19 mean on the Thermona boiler?", "gas valve"),
    _f("boiler_guide.pdf", 1, "", "The Thermona boiler must be serviced by an engineer every 18 months.",
       "How often must the Thermona boiler be serviced?", "18 months"),
    _f("boiler_guide.pdf", 2, "", "The flue pipe of the Thermona boiler must not be longer than 9 metres.",
       "What is the maximum length of the Thermona boiler flue pipe?", "9"),
    _f("boiler_guide.pdf", 2, "", "The default hot water temperature of the Thermona boiler is 62 degrees Celsius.",
       "What is the default hot water temperature of the Thermona boiler?", "62"),
    _f("safety_rules.pdf", 1, "", "Visitors to the Kestrel Works plant must wear orange helmets at all times.",
       "What colour are the helmets that visitors to the Kestrel Works plant must wear?", "orange"),
    _f("safety_rules.pdf", 1, "", "The fire assembly point of the Kestrel Works plant is car park C.",
       "Where is the fire assembly point of the Kestrel Works plant?", "car park C"),
    _f("safety_rules.pdf", 2, "", "Forklifts inside the Kestrel Works plant are limited to 8 kilometres per hour.",
       "What is the speed limit for forklifts inside the Kestrel Works plant?", "8"),
    _f("safety_rules.pdf", 2, "", "The first aid officer of the Kestrel Works plant is Miriam Ostrander.",
       "Who is the first aid officer of the Kestrel Works plant?", "Ostrander"),
    _f("router_faq.html", 0, "Nimbus R5 router FAQ › Login",
       "The admin password of the Nimbus R5 router is printed on a green sticker under the device.",
       "Where is the admin password of the Nimbus R5 router printed?", "sticker"),
    _f("router_faq.html", 0, "Nimbus R5 router FAQ › Network",
       "The Nimbus R5 router serves its web interface on port 8443.",
       "Which port does the Nimbus R5 router use for its web interface?", "8443"),
    _f("router_faq.html", 0, "Nimbus R5 router FAQ › Network",
       "The Nimbus R5 router supports at most 64 connected devices.",
       "How many connected devices does the Nimbus R5 router support at most?", "64"),
    _f("holiday_policy.html", 0, "Holiday policy › Entitlement",
       "Employees of Kestrel Works receive 27 days of paid holiday per year.",
       "How many days of paid holiday do Kestrel Works employees receive per year?", "27"),
    _f("holiday_policy.html", 0, "Holiday policy › Requests",
       "Holiday requests at Kestrel Works are approved by the shift supervisor.",
       "Who approves holiday requests at Kestrel Works?", "supervisor"),
    _f("holiday_policy.html", 0, "Holiday policy › Requests",
       "Unused holiday at Kestrel Works expires on 31 March of the following year.",
       "When does unused holiday at Kestrel Works expire?", "31 March"),
    _f("onboarding.docx", 0, "First day",
       "New engineers at Kestrel Works collect their laptop from the Lisbon office.",
       "Where do new engineers at Kestrel Works collect their laptop?", "Lisbon"),
    _f("onboarding.docx", 0, "First day › Canteen", "The Kestrel Works canteen opens at 7:30 in the morning.",
       "At what time does the Kestrel Works canteen open?", "7:30"),
    _f("onboarding.docx", 0, "Badges", "Contractors at Kestrel Works wear purple badges.",
       "What colour are the badges of contractors at Kestrel Works?", "purple"),
    _f("field_notes.md", 0, "Field notes › Calibration",
       "The Zephyr gas sensor is calibrated with a reference gas of 400 ppm.",
       "What reference gas concentration is used to calibrate the Zephyr gas sensor?", "400"),
    _f("field_notes.md", 0, "Field notes › Storage", "The Zephyr gas sensor must be stored below 35 degrees Celsius.",
       "Below what temperature must the Zephyr gas sensor be stored?", "35"),
]

UNANSWERABLE = [
    "What is the capital of Mongolia?",
    "Who wrote the novel War and Peace?",
    "What is the boiling point of ethanol?",
    "How many moons does Jupiter have?",
    "Who painted the Mona Lisa?",
    "In which year did the Berlin Wall fall?",
    "What is the chemical symbol for gold?",
    "Which language is spoken in Brazil?",
    "What is the tallest mountain in Africa?",
    "Who discovered penicillin?",
    "How many players are in a football team?",
    "What is the currency of Japan?",
]

MISSING = [
    "What is the price of the AquaLift 7 pump?",
    "What voltage does the AquaLift 7 pump motor need?",
    "Who manufactures the AquaLift 7 pump?",
    "How loud is the AquaLift 7 pump in decibels?",
    "What is the power output of the Thermona boiler in kilowatts?",
    "What does error code E42 mean on the Thermona boiler?",
    "How much does the Thermona boiler weigh?",
    "What is the phone number of the Kestrel Works site office?",
    "How many employees work at the Kestrel Works plant?",
    "What is the Wi-Fi frequency of the Nimbus R5 router?",
    "How many Ethernet ports does the Nimbus R5 router have?",
    "What is the battery life of the Zephyr gas sensor?",
]
"""On the documents' subjects, but the documents do not state the answer."""

FILLER = {
    "pump_manual.pdf": [
        "Read this manual before you install the pump. Keep it near the pump for later reference. "
        "The pump is designed for clean water without abrasive particles.",
        "Install the pump on a level surface that can carry its weight. Leave enough room around the "
        "motor for air to circulate, and protect the pump from frost.",
        "Check the cable and the plug for damage before each use. Never lift the pump by its cable. "
        "Disconnect the power before any maintenance work on the pump.",
    ],
    "boiler_guide.pdf": [
        "This guide explains how to operate the boiler safely. The boiler heats water for radiators and "
        "taps. Do not cover the air vents of the casing.",
        "If you smell gas, open the windows, do not use electrical switches and call the emergency line. "
        "Only a registered engineer may open the sealed chamber.",
    ],
    "safety_rules.pdf": [
        "These rules apply to every person on the site. Supervisors brief new staff on the first day. "
        "Report every accident, even a minor one, to the site office.",
        "Keep walkways clear of tools and materials. Store chemicals in the marked cabinets only. "
        "Smoking is allowed in the marked shelter near the gate.",
    ],
}
TITLES = {"pump_manual.pdf": "AquaLift 7 Pump Manual", "boiler_guide.pdf": "Thermona Boiler Guide",
          "safety_rules.pdf": "Kestrel Works Safety Rules"}


OUTLINE = {("pump_manual.pdf", 1): ["# Safety"], ("pump_manual.pdf", 2): ["# Installation", "## Mounting"],
           ("pump_manual.pdf", 3): ["# Maintenance"]}
"""PDF headings that are also bookmarks (the PDF's outline), by page: `#` level 1, `##` level 2."""


def page_text(file: str, page: int) -> str:
    """The known text of a PDF page (what extraction must recover); heading lines start with #."""
    facts = [f.sentence for f in FACTS if f.file == file and f.page == page]
    return "\n".join(OUTLINE.get((file, page), []) + [FILLER[file][page - 1]] + facts)


def write_pdf(path: Path, title: str, pages: list[str]) -> None:
    from fpdf import FPDF

    class Doc(FPDF):
        def header(self) -> None:
            self.set_font("helvetica", "I", 8)
            self.cell(0, 8, title, align="C")
            self.ln(12)

        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("helvetica", "I", 8)
            self.cell(0, 10, f"Page {self.page_no()}", align="C")

    pdf = Doc()
    pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        for para in text.split("\n"):
            level = len(para) - len(para.lstrip("#"))
            if level:  # a heading, and a bookmark in the outline
                pdf.start_section(para.lstrip("# "), level=level - 1)
                pdf.set_font("helvetica", "B", 14)
                para = para.lstrip("# ")
            else:
                pdf.set_font("helvetica", size=11)
            pdf.multi_cell(0, 6, para)
            pdf.ln(3)
    pdf.output(str(path))


HTML = """<!DOCTYPE html><html><head><title>{title}</title>
<script>window.analytics = {{track: function () {{ return "tracking pixel"; }}}};</script>
<style>nav {{ float: left; }}</style></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/products">Products</a></li><li><a href="/support">Support</a></li>
<li><a href="/careers">Careers</a></li><li><a href="/login">Log in</a></li></ul></nav>
<div class="cookie-banner">We use cookies to improve your experience. Accept all cookies?</div>
<main><article><h1>{title}</h1>
{body}
</article></main>
<footer><p>Copyright 2026 Kestrel Works Ltd. All rights reserved.</p><p>Privacy policy | Terms of use | Sitemap</p></footer>
<script>document.querySelectorAll("a").forEach(function (a) {{ a.rel = "noopener"; }});</script>
</body></html>
"""
HTML_BOILERPLATE = ("cookies", "Copyright", "Careers", "tracking", "Privacy policy", "noopener")


def _html_body(file: str, intro: str) -> str:
    parts = [f"<p>{intro}</p>"]
    current = ""
    for f in (f for f in FACTS if f.file == file):
        section = f.section.split(" › ")[-1]
        if section != current:
            parts.append(f"<h2>{section}</h2>")
            current = section
        parts.append(f"<p>{f.sentence} This applies to every site of the company unless a local rule says "
                     f"otherwise.</p>")
    return "\n".join(parts)


def write_docs(folder: Path) -> Path:
    """Write the fixture folder; returns it."""
    import docx

    folder.mkdir(parents=True, exist_ok=True)
    for file, title in TITLES.items():
        n = max(f.page for f in FACTS if f.file == file)
        write_pdf(folder / file, title, [page_text(file, p) for p in range(1, n + 1)])
    (folder / "router_faq.html").write_text(HTML.format(title="Nimbus R5 router FAQ", body=_html_body(
        "router_faq.html", "Answers to the questions our support team hears most often about the Nimbus R5.")))
    (folder / "holiday_policy.html").write_text(HTML.format(title="Holiday policy", body=_html_body(
        "holiday_policy.html", "This policy describes paid holiday for the staff of Kestrel Works.")))
    word = docx.Document()
    word.add_heading("Onboarding at Kestrel Works", 0)
    word.add_paragraph("Welcome to Kestrel Works. This document lists what happens in your first week.")
    word.add_heading("First day", 1)
    word.add_paragraph(FACTS[20].sentence + " Bring an identity document to the reception desk.")
    word.add_heading("Canteen", 2)
    word.add_paragraph(FACTS[21].sentence + " Lunch is served until two in the afternoon.")
    word.add_heading("Badges", 1)
    word.add_paragraph("Employees wear blue badges. " + FACTS[22].sentence)
    table = word.add_table(rows=2, cols=2)
    for (r, c), text in {(0, 0): "Badge", (0, 1): "Who", (1, 0): "Blue", (1, 1): "Employees"}.items():
        table.cell(r, c).text = text
    word.save(str(folder / "onboarding.docx"))
    (folder / "field_notes.md").write_text(
        "# Field notes\n\nNotes from the measurement campaign of the environmental team.\n\n## Calibration\n\n"
        f"{FACTS[23].sentence} Calibrate before every campaign.\n\n## Storage\n\n{FACTS[24].sentence} "
        "Keep the sensor in its case.\n")
    return folder
