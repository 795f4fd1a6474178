"""Deterministic generator of the shipped synthetic clinical dataset.

Every patient, clinician, place and identifier produced here is invented: names are glued
together from nonsense syllables, MRNs start with ``FAKE-``, phone numbers use the reserved
``555-01xx`` block, e-mails use ``example.org`` and dates fall in 2091-2093. The medical content
is a small, general, textbook-level table written for this project. Not for clinical use.

Run ``python -m medlora.data._synthetic`` to regenerate
``medlora/data/default/clinical_synthetic.jsonl`` byte for byte.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlora._io import atomic_file

DEFAULT_PATH = Path(__file__).parent / "default" / "clinical_synthetic.jsonl"
"""Where the shipped file lives inside the package."""

TASK_COUNTS: dict[str, int] = {
    "summarization": 84,
    "diagnosis_qa": 96,
    "patient_education": 84,
    "multiple_choice": 96,
}
"""Records per task when ``n_per_task`` is not given (order is the order in the file)."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Condition:
    """One row of the built-in knowledge table (general textbook level, not advice)."""

    name: str
    """Clinical name, lower case (``"community-acquired pneumonia"``)."""
    lay: str
    """Plain-language name a patient would use."""
    about: str
    """Plain-language explanation of what the condition is."""
    ages: tuple[int, int]
    """Typical age range (inclusive) used when sampling patients."""
    sexes: str
    """Sexes to sample from: ``"FM"``, ``"F"`` or ``"M"``."""
    symptoms: tuple[str, ...]
    """Typical symptoms as short noun phrases."""
    findings: tuple[str, ...]
    """Typical exam or bedside findings."""
    vitals: dict[str, tuple[float, float]]
    """Vital-sign ranges that differ from the normal defaults."""
    tests: tuple[str, ...]
    """First tests, most useful first."""
    management: str
    """First-line management as a clause (no dosing)."""
    differentials: tuple[str, ...]
    """Names of other table conditions worth considering."""
    clue: str
    """The combination of features that points to this condition."""
    self_care: str
    """Plain-language treatment and self-care sentence(s)."""
    red_flags: str
    """Plain-language warning signs that need prompt care."""
    drug: str
    """A common first-line medicine or measure."""
    drug_use: str
    """Plain-language explanation of what the medicine does."""
    drug_side: str
    """Plain-language side effects and tips."""
    onset: str = "days"
    """Usual time unit of the history: ``"hours"``, ``"days"`` or ``"weeks"``."""


_FEVER = (38.1, 39.4)
_TACHY = (101.0, 122.0)

CONDITIONS: tuple[Condition, ...] = (
    Condition(
        name="community-acquired pneumonia",
        lay="pneumonia",
        about="Pneumonia is an infection of the lungs. The small air sacs fill with fluid, which "
        "makes you cough, run a fever and feel short of breath.",
        ages=(25, 88),
        sexes="FM",
        symptoms=(
            "productive cough",
            "fever",
            "shortness of breath",
            "pleuritic chest pain",
            "fatigue",
            "chills",
        ),
        findings=(
            "crackles over the right lower lung",
            "bronchial breath sounds at the left base",
            "dullness to percussion at the right base",
        ),
        vitals={"temp": _FEVER, "hr": (96.0, 118.0), "rr": (20.0, 26.0), "spo2": (90.0, 95.0)},
        tests=("chest X-ray", "complete blood count", "pulse oximetry", "basic metabolic panel"),
        management="oral antibiotics chosen by local guidance and severity score, fluids, rest "
        "and review within 48-72 hours",
        differentials=(
            "acute bronchitis",
            "pulmonary embolism",
            "acute decompensated heart failure",
        ),
        clue="fever, productive cough and focal crackles",
        self_care="Take the antibiotic exactly as prescribed, drink plenty of fluids and rest. "
        "Most people start to feel better within two to three days, but the cough can last weeks.",
        red_flags="Get urgent care if you become more breathless, have lips that look blue, feel "
        "confused, or still have a high fever after two to three days of antibiotics.",
        drug="amoxicillin",
        drug_use="Amoxicillin is an antibiotic. It kills the bacteria that most often cause "
        "pneumonia in otherwise healthy adults.",
        drug_side="It can cause an upset stomach, loose stools or a mild rash. Stop it and get "
        "help straight away if you get swelling of the face or trouble breathing. Finish the "
        "full course.",
    ),
    Condition(
        name="type 2 diabetes mellitus",
        onset="weeks",
        lay="type 2 diabetes",
        about="Type 2 diabetes means your body does not use insulin well, so sugar builds up in "
        "the blood. Over years, high sugar can damage the eyes, kidneys, nerves and heart.",
        ages=(35, 85),
        sexes="FM",
        symptoms=(
            "increased thirst",
            "frequent urination",
            "blurred vision",
            "fatigue",
            "slow-healing cuts",
            "unintended weight loss",
        ),
        findings=(
            "fasting glucose of 152 mg/dL",
            "random glucose of 241 mg/dL",
            "HbA1c of 7.8%",
            "body mass index of 33",
            "acanthosis nigricans on the neck",
        ),
        vitals={"sbp": (132.0, 146.0)},
        tests=(
            "HbA1c",
            "fasting plasma glucose",
            "lipid panel",
            "urine albumin-to-creatinine ratio",
            "basic metabolic panel",
        ),
        management="lifestyle change with diet and exercise plus metformin if kidney function "
        "allows, with follow-up HbA1c in about three months",
        differentials=("primary hypothyroidism", "Graves disease", "uncomplicated cystitis"),
        clue="thirst, frequent urination and a raised HbA1c",
        self_care="Treatment starts with healthy eating, regular activity and, for most people, "
        "a tablet called metformin. Checking your feet and going to eye checks helps prevent "
        "problems.",
        red_flags="Seek care quickly if you are very thirsty and drowsy, vomiting, breathing fast, "
        "or if your sugar readings stay very high or drop low with shakiness and sweating.",
        drug="metformin",
        drug_use="Metformin lowers blood sugar mainly by reducing the sugar your liver releases. "
        "It does not usually cause low sugar on its own.",
        drug_side="Stomach upset, loose stools and a metallic taste are common at first and often "
        "settle. Taking it with food helps. Tell your team before scans that use contrast dye.",
    ),
    Condition(
        name="migraine without aura",
        lay="migraine",
        about="A migraine is a type of headache that comes in attacks. It is often throbbing, on "
        "one side, and comes with feeling sick and being bothered by light and noise.",
        ages=(16, 55),
        sexes="FFM",
        symptoms=(
            "throbbing unilateral headache",
            "nausea",
            "photophobia",
            "phonophobia",
            "headache worse with activity",
        ),
        findings=("normal neurological examination", "no neck stiffness", "normal fundoscopy"),
        vitals={},
        tests=(
            "clinical diagnosis with a careful neurological exam",
            "headache diary",
            "neuroimaging only if red flags are present",
        ),
        management="an NSAID or a triptan early in the attack, an antiemetic if needed, and "
        "trigger review, with preventive therapy if attacks are frequent",
        differentials=(
            "tension-type headache",
            "subarachnoid hemorrhage",
            "essential hypertension",
        ),
        clue="recurrent throbbing one-sided headache with nausea, light sensitivity and a "
        "normal neurological exam",
        self_care="Treat attacks early with the medicine you were advised, rest in a dark quiet "
        "room and keep a headache diary. Regular sleep and meals can reduce attacks.",
        red_flags="Get emergency help for a sudden 'worst ever' headache, a headache with fever "
        "and stiff neck, weakness, confusion, or trouble speaking or seeing.",
        drug="sumatriptan",
        drug_use="Sumatriptan is a triptan. It narrows swollen blood vessels and calms the nerve "
        "signals of a migraine attack. It works best taken early in the headache.",
        drug_side="You may feel tingling, warmth, or tightness in the chest or throat for a short "
        "time. It is not used in people with heart disease. Do not use it more than advised.",
    ),
    Condition(
        name="uncomplicated cystitis",
        lay="a bladder infection",
        about="A bladder infection, also called a urinary tract infection, happens when bacteria "
        "get into the bladder. It makes passing urine burn and you need to go often.",
        ages=(18, 65),
        sexes="F",
        symptoms=(
            "dysuria",
            "urinary frequency",
            "urinary urgency",
            "suprapubic discomfort",
            "cloudy urine",
        ),
        findings=(
            "mild suprapubic tenderness",
            "no costovertebral angle tenderness",
            "urine dipstick positive for leukocytes and nitrites",
        ),
        vitals={},
        tests=(
            "urine dipstick",
            "urine culture if symptoms recur or fail to settle",
            "pregnancy test when relevant",
        ),
        management="a short course of an oral antibiotic such as nitrofurantoin, guided by local "
        "resistance patterns, plus fluids",
        differentials=("acute pyelonephritis", "renal colic from a kidney stone", "vaginitis"),
        clue="burning on urination, frequency and a positive nitrite dipstick without fever",
        self_care="A short course of antibiotics usually clears it in a few days. Drink enough "
        "water and do not hold in urine for long.",
        red_flags="Get seen the same day if you develop fever, shivers, pain in your side or back, "
        "vomiting, or if you are pregnant.",
        drug="nitrofurantoin",
        drug_use="Nitrofurantoin is an antibiotic that works mainly in the bladder. It is a common "
        "first choice for simple bladder infections.",
        drug_side="It can cause nausea and turn urine dark yellow or brown, which is harmless. "
        "Take it with food and finish the course.",
    ),
    Condition(
        name="acute appendicitis",
        onset="hours",
        lay="appendicitis",
        about="Appendicitis is swelling and infection of the appendix, a small pouch attached to "
        "the bowel on the lower right side of the belly.",
        ages=(10, 45),
        sexes="FM",
        symptoms=(
            "periumbilical pain migrating to the right lower quadrant",
            "anorexia",
            "nausea",
            "vomiting",
            "low-grade fever",
        ),
        findings=(
            "tenderness at McBurney's point",
            "rebound tenderness in the right lower quadrant",
            "positive Rovsing sign",
            "white cell count of 14.2 x10^9/L",
        ),
        vitals={"temp": (37.6, 38.6), "hr": (92.0, 112.0)},
        tests=(
            "complete blood count",
            "C-reactive protein",
            "abdominal ultrasound or CT",
            "pregnancy test when relevant",
        ),
        management="nil by mouth, intravenous fluids, analgesia, antibiotics and an urgent "
        "surgical review for appendectomy",
        differentials=("renal colic from a kidney stone", "acute cholecystitis", "ovarian torsion"),
        clue="pain moving from the umbilicus to the right lower quadrant with anorexia and "
        "localized tenderness",
        self_care="Appendicitis is usually treated with an operation to remove the appendix, often "
        "through small cuts. Most people go home within a day or two.",
        red_flags="Go to the emergency department if belly pain gets worse, spreads across the "
        "whole belly, or comes with fever, vomiting or a hard, tender stomach.",
        drug="intravenous antibiotics",
        drug_use="Antibiotics given through a drip fight the infection around the appendix before "
        "and sometimes after the operation.",
        drug_side="Some people feel sick or get loose stools. Tell the team about any allergy, "
        "rash or itching.",
    ),
    Condition(
        name="deep vein thrombosis",
        lay="a blood clot in the leg",
        about="A deep vein thrombosis, or DVT, is a blood clot in a deep vein, usually in the "
        "leg. It can cause swelling and pain, and a piece can travel to the lungs.",
        ages=(30, 85),
        sexes="FM",
        symptoms=("unilateral calf swelling", "calf pain", "leg warmth", "leg heaviness"),
        findings=(
            "calf circumference 3 cm greater on the affected side",
            "pitting edema of one leg",
            "tenderness along the deep veins",
        ),
        vitals={"hr": (84.0, 100.0)},
        tests=("Wells score", "D-dimer if probability is low", "compression ultrasound of the leg"),
        management="anticoagulation with a direct oral anticoagulant if there are no "
        "contraindications, plus a search for provoking factors",
        differentials=("cellulitis", "ruptured Baker cyst", "knee osteoarthritis"),
        clue="a swollen, tender calf on one side after immobility",
        self_care="Treatment is a blood thinner, usually for at least three months. Keep moving "
        "as advised and avoid long periods of sitting still.",
        red_flags="Call emergency services for sudden breathlessness, chest pain, coughing blood "
        "or fainting. Also seek care for unusual bleeding or black stools.",
        drug="apixaban",
        drug_use="Apixaban is a blood thinner. It stops the clot growing and lowers the chance of "
        "new clots while your body breaks the clot down.",
        drug_side="The main risk is bleeding, such as nosebleeds, bruising or blood in urine. Do "
        "not miss doses and tell every doctor and dentist you take it.",
    ),
    Condition(
        name="asthma exacerbation",
        lay="an asthma attack",
        about="An asthma attack is when the airways in your lungs tighten and swell, so it is "
        "hard to breathe out. It often follows a cold, allergens or smoke.",
        ages=(8, 60),
        sexes="FM",
        symptoms=(
            "wheeze",
            "chest tightness",
            "shortness of breath",
            "nocturnal cough",
            "difficulty completing sentences",
        ),
        findings=(
            "diffuse expiratory wheeze",
            "prolonged expiratory phase",
            "peak flow 55% of personal best",
            "use of accessory muscles",
        ),
        vitals={"hr": (100.0, 120.0), "rr": (22.0, 28.0), "spo2": (91.0, 95.0)},
        tests=(
            "peak expiratory flow",
            "pulse oximetry",
            "blood gas if severe",
            "chest X-ray only if pneumonia or pneumothorax is suspected",
        ),
        management="inhaled short-acting bronchodilator repeated as needed, a short course of oral "
        "corticosteroids and a review of the controller inhaler",
        differentials=(
            "COPD exacerbation",
            "community-acquired pneumonia",
            "acute decompensated heart failure",
        ),
        clue="wheeze, chest tightness and reduced peak flow after a trigger",
        self_care="Use your reliever inhaler as your asthma action plan says, and take steroid "
        "tablets if prescribed. Keep using your preventer inhaler every day.",
        red_flags="Call emergency services if the reliever is not helping, you cannot finish a "
        "sentence, your lips look blue, or you feel drowsy or exhausted.",
        drug="salbutamol (albuterol) inhaler",
        drug_use="This reliever inhaler relaxes the muscles around the airways within minutes, "
        "making it easier to breathe.",
        drug_side="It can make your hands shake or your heart beat fast for a short while. If you "
        "need it more than usual, your asthma needs review.",
    ),
    Condition(
        name="primary hypothyroidism",
        onset="weeks",
        lay="an underactive thyroid",
        about="An underactive thyroid means the thyroid gland in your neck makes too little "
        "hormone. Your body slows down, so you may feel tired, cold and gain weight.",
        ages=(30, 85),
        sexes="FFM",
        symptoms=(
            "fatigue",
            "cold intolerance",
            "weight gain",
            "constipation",
            "dry skin",
            "hair thinning",
        ),
        findings=(
            "delayed relaxation of ankle reflexes",
            "dry coarse skin",
            "TSH of 11.4 mU/L",
            "low free T4",
        ),
        vitals={"hr": (52.0, 62.0)},
        tests=("TSH", "free T4", "thyroid peroxidase antibodies", "lipid panel"),
        management="daily levothyroxine titrated to TSH every 6-8 weeks",
        differentials=(
            "major depressive disorder",
            "iron-deficiency anemia",
            "type 2 diabetes mellitus",
        ),
        clue="fatigue, cold intolerance and weight gain with a raised TSH",
        self_care="A daily thyroid hormone tablet replaces what your gland cannot make. Blood "
        "tests every few weeks help find the right dose.",
        red_flags="Seek care if you feel very drowsy or confused, extremely cold, or notice chest "
        "pain or a racing heart after a dose change.",
        drug="levothyroxine",
        drug_use="Levothyroxine is a copy of the hormone your thyroid normally makes. It brings "
        "your levels back to normal.",
        drug_side="Take it on an empty stomach, away from iron or calcium. Too high a dose can "
        "cause a racing heart, sweating or poor sleep.",
    ),
    Condition(
        name="iron-deficiency anemia",
        onset="weeks",
        lay="iron-deficiency anemia",
        about="Iron-deficiency anemia means you have too few healthy red blood cells because your "
        "body is short of iron. Your blood carries less oxygen, so you feel tired.",
        ages=(18, 80),
        sexes="FFM",
        symptoms=(
            "fatigue",
            "exertional breathlessness",
            "pallor",
            "headaches",
            "craving ice",
            "brittle nails",
        ),
        findings=(
            "conjunctival pallor",
            "hemoglobin of 9.6 g/dL",
            "low MCV",
            "ferritin of 6 ng/mL",
            "koilonychia",
        ),
        vitals={"hr": (88.0, 104.0)},
        tests=(
            "complete blood count",
            "ferritin",
            "iron studies",
            "evaluation for a source of blood loss",
        ),
        management="oral iron replacement and investigation of the cause, including "
        "gastrointestinal evaluation when indicated",
        differentials=(
            "primary hypothyroidism",
            "major depressive disorder",
            "vitamin B12 deficiency",
        ),
        clue="fatigue and pallor with a low MCV and low ferritin",
        self_care="Iron tablets refill your iron stores over a few months. Your team will also "
        "look for why you lost iron, such as heavy periods or bleeding in the gut.",
        red_flags="Get help quickly for black or bloody stools, fainting, chest pain, or being "
        "short of breath at rest.",
        drug="ferrous sulfate",
        drug_use="Ferrous sulfate is an iron tablet. It gives your body the iron it needs to make "
        "new red blood cells.",
        drug_side="It often turns stools dark and can cause constipation or stomach upset. Taking "
        "it every other day or with food can help, but tea and antacids reduce absorption.",
    ),
    Condition(
        name="gastroesophageal reflux disease",
        onset="weeks",
        lay="acid reflux",
        about="Acid reflux happens when stomach acid flows back up into the food pipe. It causes "
        "heartburn, a burning feeling behind the breastbone, often after meals.",
        ages=(25, 80),
        sexes="FM",
        symptoms=(
            "heartburn after meals",
            "acid regurgitation",
            "sour taste in the mouth",
            "symptoms worse lying down",
            "chronic dry cough",
        ),
        findings=("mild epigastric tenderness", "otherwise unremarkable abdominal examination"),
        vitals={},
        tests=(
            "clinical diagnosis with a trial of acid suppression",
            "endoscopy if alarm features are present",
        ),
        management="lifestyle advice and a 4-8 week trial of a proton pump inhibitor",
        differentials=("acute coronary syndrome", "acute cholecystitis", "peptic ulcer disease"),
        clue="burning retrosternal pain after meals that is worse lying down",
        self_care="Smaller meals, not eating late, raising the head of the bed and cutting down "
        "on alcohol and smoking help. An acid-reducing tablet is often used for a few weeks.",
        red_flags="See a doctor soon if you have trouble swallowing, weight loss, vomiting blood, "
        "or black stools. Chest pain with sweating or breathlessness needs emergency care.",
        drug="omeprazole",
        drug_use="Omeprazole is a proton pump inhibitor. It reduces the amount of acid your "
        "stomach makes so the food pipe can heal.",
        drug_side="It is usually well tolerated; headache or loose stools can happen. Take it "
        "30 minutes before breakfast. Long-term use should be reviewed.",
    ),
    Condition(
        name="essential hypertension",
        onset="weeks",
        lay="high blood pressure",
        about="High blood pressure means the force of blood on your artery walls stays too high. "
        "It rarely causes symptoms but raises the risk of stroke, heart and kidney disease.",
        ages=(35, 85),
        sexes="FM",
        symptoms=("no symptoms", "occasional morning headaches", "raised readings at a pharmacy"),
        findings=(
            "repeated office readings above 140/90",
            "normal heart sounds",
            "no peripheral edema",
        ),
        vitals={"sbp": (146.0, 168.0), "dbp": (92.0, 104.0)},
        tests=(
            "ambulatory or home blood pressure monitoring",
            "basic metabolic panel",
            "urinalysis",
            "ECG",
            "lipid panel",
        ),
        management="lifestyle change and, if confirmed, a first-line agent such as an ACE "
        "inhibitor, calcium channel blocker or thiazide-type diuretic",
        differentials=("white-coat hypertension", "primary hyperaldosteronism", "Graves disease"),
        clue="persistently raised readings with no secondary cause",
        self_care="Less salt, regular exercise, a healthy weight and limiting alcohol all lower "
        "blood pressure. Many people also need a daily tablet.",
        red_flags="Seek emergency care for a very high reading with chest pain, severe headache, "
        "weakness, confusion or trouble seeing.",
        drug="amlodipine",
        drug_use="Amlodipine relaxes and widens the blood vessels, which lowers blood pressure. "
        "It is taken once a day.",
        drug_side="Ankle swelling, flushing and headache are the most common side effects. Do "
        "not stop it suddenly without talking to your team.",
    ),
    Condition(
        name="COPD exacerbation",
        lay="a COPD flare-up",
        about="COPD is a long-term lung disease, usually from smoking, that narrows the airways. "
        "A flare-up is when breathing, cough and phlegm suddenly get worse.",
        ages=(50, 88),
        sexes="FM",
        symptoms=(
            "worsening breathlessness",
            "increased sputum volume",
            "change in sputum color",
            "wheeze",
            "chest tightness",
        ),
        findings=(
            "diffuse wheeze with reduced air entry",
            "pursed-lip breathing",
            "hyperinflated chest",
        ),
        vitals={"hr": (96.0, 116.0), "rr": (22.0, 28.0), "spo2": (86.0, 92.0)},
        tests=(
            "pulse oximetry",
            "arterial blood gas if oxygen saturation is low",
            "chest X-ray",
            "complete blood count",
        ),
        management="inhaled bronchodilators, a short course of oral corticosteroids, antibiotics "
        "if sputum is purulent, and controlled oxygen to a target of 88-92%",
        differentials=(
            "community-acquired pneumonia",
            "acute decompensated heart failure",
            "pulmonary embolism",
        ),
        clue="a smoker with worsening breathlessness and more, discolored sputum",
        self_care="Use your inhalers as planned, take steroid tablets and antibiotics if given, "
        "and pace yourself. Stopping smoking is the most helpful long-term step.",
        red_flags="Call for help if you are too breathless to speak, drowsy or confused, have "
        "blue lips, or your rescue medicines are not working.",
        drug="prednisolone tablets",
        drug_use="Prednisolone is a steroid that calms the swelling in your airways during a "
        "flare-up. It is usually given for about five days.",
        drug_side="It can raise blood sugar, disturb sleep and increase appetite. Take it in the "
        "morning with food.",
    ),
    Condition(
        name="acute decompensated heart failure",
        lay="a heart failure flare-up",
        about="Heart failure means the heart does not pump as well as it should. In a flare-up, "
        "fluid builds up in the lungs and legs, making you breathless and swollen.",
        ages=(55, 90),
        sexes="FM",
        symptoms=(
            "exertional dyspnea",
            "orthopnea",
            "paroxysmal nocturnal dyspnea",
            "ankle swelling",
            "weight gain of 3 kg in a week",
        ),
        findings=(
            "bibasal crackles",
            "raised jugular venous pressure",
            "bilateral pitting edema",
            "third heart sound",
        ),
        vitals={"hr": (96.0, 118.0), "rr": (20.0, 26.0), "spo2": (89.0, 94.0)},
        tests=("BNP or NT-proBNP", "chest X-ray", "ECG", "echocardiogram", "basic metabolic panel"),
        management="intravenous loop diuretic, fluid and salt restriction, daily weights and "
        "review of guideline-directed heart failure medicines",
        differentials=("COPD exacerbation", "community-acquired pneumonia", "pulmonary embolism"),
        clue="orthopnea, raised JVP, bibasal crackles and leg edema",
        self_care="Water tablets help remove extra fluid. Weigh yourself every morning, limit salt "
        "and fluids as advised and take your heart medicines every day.",
        red_flags="Seek urgent care if you gain more than 2 kg in two days, cannot lie flat, "
        "have chest pain, or feel faint.",
        drug="furosemide",
        drug_use="Furosemide is a water tablet. It makes your kidneys pass more urine, which "
        "removes the extra fluid that makes you breathless and swollen.",
        drug_side="You will pass urine more often for a few hours after a dose. It can cause "
        "dizziness and low potassium, so blood tests are needed.",
    ),
    Condition(
        name="acute gout flare",
        lay="gout",
        about="Gout is a type of arthritis caused by uric acid crystals forming in a joint. It "
        "causes sudden, very painful, red and swollen joints, often the big toe.",
        ages=(35, 85),
        sexes="MMF",
        symptoms=(
            "sudden severe pain in the big toe",
            "joint swelling",
            "redness over the joint",
            "pain waking the patient at night",
        ),
        findings=(
            "hot, red, swollen first metatarsophalangeal joint",
            "exquisite tenderness to light touch",
            "serum urate of 9.1 mg/dL",
        ),
        vitals={"temp": (37.2, 37.9)},
        tests=(
            "joint aspiration for crystal analysis when feasible",
            "serum urate",
            "basic metabolic panel",
        ),
        management="an NSAID, colchicine or a short course of corticosteroid, with urate-lowering "
        "therapy discussed after the flare for recurrent attacks",
        differentials=("septic arthritis", "cellulitis", "knee osteoarthritis"),
        clue="sudden hot, swollen big-toe joint overnight",
        self_care="Anti-inflammatory medicine, rest and raising the foot help. Drinking water and "
        "cutting back on alcohol and sugary drinks lower the chance of another attack.",
        red_flags="Get seen quickly if you have a fever or feel unwell, or if several joints "
        "become hot and swollen.",
        drug="colchicine",
        drug_use="Colchicine calms the inflammation caused by uric acid crystals. It works best "
        "started within the first day of a flare.",
        drug_side="Diarrhea and nausea are common and mean the dose may be too high. It interacts "
        "with several medicines, so check with a pharmacist.",
    ),
    Condition(
        name="cellulitis",
        lay="cellulitis",
        about="Cellulitis is an infection of the deeper layers of the skin. The skin becomes "
        "red, warm, swollen and sore, most often on the lower leg.",
        ages=(20, 88),
        sexes="FM",
        symptoms=("spreading redness of the lower leg", "warmth", "pain", "swelling", "fever"),
        findings=(
            "poorly demarcated erythema of the shin",
            "warm, tender skin",
            "a small crack between the toes",
        ),
        vitals={"temp": (37.6, 38.7), "hr": (88.0, 106.0)},
        tests=(
            "clinical diagnosis",
            "marking the edge of redness",
            "blood cultures only if systemically unwell",
        ),
        management="oral antibiotics covering streptococci, leg elevation and review in 48 hours",
        differentials=("deep vein thrombosis", "acute gout flare", "venous stasis dermatitis"),
        clue="a warm, spreading area of redness with a break in the skin",
        self_care="Take the antibiotics, keep the leg raised and watch the pen line drawn around "
        "the redness. Treat athlete's foot if you have it.",
        red_flags="Get urgent care if the redness spreads past the line, you get a high fever, "
        "blisters, or the pain becomes severe.",
        drug="cefalexin",
        drug_use="Cefalexin is an antibiotic that works well against the skin bacteria that "
        "usually cause cellulitis.",
        drug_side="It can upset the stomach or cause loose stools. Tell your team if you have had "
        "a serious penicillin allergy.",
    ),
    Condition(
        name="streptococcal pharyngitis",
        lay="strep throat",
        about="Strep throat is a throat infection caused by bacteria called streptococcus. It "
        "causes a painful throat, fever and swollen glands, usually without a cough.",
        ages=(5, 35),
        sexes="FM",
        symptoms=("sore throat", "painful swallowing", "fever", "absence of cough", "headache"),
        findings=("tonsillar exudate", "tender anterior cervical lymph nodes", "palatal petechiae"),
        vitals={"temp": _FEVER, "hr": (96.0, 116.0)},
        tests=("Centor or McIsaac score", "rapid antigen detection test", "throat culture"),
        management="a 10-day course of penicillin V or amoxicillin when testing is positive, "
        "with analgesia and fluids",
        differentials=("viral pharyngitis", "infectious mononucleosis", "acute otitis media"),
        clue="fever, tonsillar exudate, tender neck nodes and no cough",
        self_care="Antibiotics shorten the illness and prevent complications. Pain relief, cold "
        "drinks and rest help. You are usually not contagious after 24 hours of antibiotics.",
        red_flags="Get urgent help for drooling, trouble breathing or swallowing saliva, a "
        "muffled voice or severe one-sided throat pain.",
        drug="penicillin V",
        drug_use="Penicillin V is an antibiotic that kills the streptococcus bacteria causing "
        "strep throat.",
        drug_side="It can cause stomach upset. A rash, swelling or wheeze may be an allergy and "
        "needs prompt review. Finish all ten days.",
    ),
    Condition(
        name="acute otitis media",
        lay="a middle ear infection",
        about="A middle ear infection is an infection behind the eardrum. It is common in young "
        "children, often after a cold, and causes ear pain and fever.",
        ages=(2, 9),
        sexes="FM",
        symptoms=("ear pain", "tugging at the ear", "fever", "irritability", "poor sleep"),
        findings=(
            "bulging, red tympanic membrane",
            "reduced tympanic membrane mobility",
            "middle ear effusion",
        ),
        vitals={"temp": (37.9, 39.2), "hr": (100.0, 124.0)},
        tests=("otoscopy", "pneumatic otoscopy if available"),
        management="pain relief with watchful waiting for 48-72 hours in mild cases, or "
        "amoxicillin for severe or bilateral disease in young children",
        differentials=("otitis externa", "streptococcal pharyngitis", "dental pain"),
        clue="a bulging red eardrum in a feverish child with ear pain",
        self_care="Many ear infections get better on their own in two to three days. Paracetamol "
        "or ibuprofen helps the pain. Sometimes antibiotics are needed.",
        red_flags="Seek care quickly for swelling or redness behind the ear, a stiff neck, "
        "unusual drowsiness, or fever that does not settle after two days.",
        drug="amoxicillin liquid",
        drug_use="Amoxicillin is an antibiotic that treats the bacteria that cause many ear "
        "infections. The dose is worked out from the child's weight.",
        drug_side="It can cause loose stools or a nappy rash. Stop and seek help for swelling of "
        "the face or a hive-like rash.",
    ),
    Condition(
        name="renal colic from a kidney stone",
        onset="hours",
        lay="a kidney stone",
        about="A kidney stone is a hard lump of minerals that forms in the kidney. Pain starts "
        "when it moves into the tube to the bladder and blocks it.",
        ages=(25, 70),
        sexes="MMF",
        symptoms=(
            "severe colicky flank pain radiating to the groin",
            "restlessness",
            "nausea",
            "visible blood in urine",
        ),
        findings=(
            "costovertebral angle tenderness",
            "microscopic hematuria on dipstick",
            "patient unable to lie still",
        ),
        vitals={"hr": (94.0, 112.0), "sbp": (136.0, 152.0)},
        tests=(
            "urinalysis",
            "non-contrast CT of the kidneys, ureters and bladder",
            "basic metabolic panel",
        ),
        management="analgesia with an NSAID if kidney function allows, fluids, and urology "
        "referral for large stones, infection or obstruction",
        differentials=("acute appendicitis", "acute pyelonephritis", "abdominal aortic aneurysm"),
        clue="colicky flank pain radiating to the groin with blood in the urine",
        self_care="Most small stones pass on their own within a few weeks. Pain relief and "
        "drinking plenty of water help; you may be asked to strain your urine.",
        red_flags="Go to the emergency department if you have a fever, shivers, cannot pass "
        "urine, or the pain cannot be controlled.",
        drug="naproxen",
        drug_use="Naproxen is an anti-inflammatory painkiller. It eases kidney stone pain and "
        "reduces swelling around the stone.",
        drug_side="Take it with food. It can irritate the stomach and is not suitable for some "
        "people with kidney problems or ulcers.",
    ),
    Condition(
        name="Graves disease",
        onset="weeks",
        lay="an overactive thyroid",
        about="An overactive thyroid makes too much thyroid hormone, which speeds up your body. "
        "Graves disease, an immune condition, is the most common cause.",
        ages=(20, 60),
        sexes="FFM",
        symptoms=(
            "palpitations",
            "heat intolerance",
            "weight loss despite good appetite",
            "tremor",
            "anxiety",
            "loose stools",
        ),
        findings=(
            "diffuse goiter",
            "fine tremor of the outstretched hands",
            "lid lag",
            "TSH below 0.01 mU/L",
        ),
        vitals={"hr": (104.0, 126.0), "sbp": (132.0, 146.0)},
        tests=("TSH", "free T4 and T3", "TSH receptor antibodies", "ECG"),
        management="a beta blocker for symptoms and an antithyroid drug such as methimazole, with "
        "endocrinology review",
        differentials=(
            "generalized anxiety disorder",
            "atrial fibrillation",
            "type 2 diabetes mellitus",
        ),
        clue="weight loss, heat intolerance, tremor and a suppressed TSH",
        self_care="Tablets can calm the symptoms and lower hormone levels. Regular blood tests "
        "check the dose. Tell your team about any eye soreness or bulging.",
        red_flags="Seek urgent care for a very fast or irregular heartbeat, high fever, confusion, "
        "or a sore throat with fever while on antithyroid tablets.",
        drug="methimazole",
        drug_use="Methimazole slows the thyroid gland so it makes less hormone. It takes a few "
        "weeks to work fully.",
        drug_side="Itching and rash can happen. Rarely it lowers white blood cells, so a sore "
        "throat with fever needs an urgent blood test.",
    ),
    Condition(
        name="major depressive disorder",
        onset="weeks",
        lay="depression",
        about="Depression is a common illness where low mood or loss of interest lasts most of "
        "the day for at least two weeks and affects sleep, energy and daily life.",
        ages=(18, 80),
        sexes="FM",
        symptoms=(
            "persistent low mood",
            "anhedonia",
            "early morning waking",
            "poor concentration",
            "low energy",
            "reduced appetite",
        ),
        findings=("PHQ-9 score of 17", "flat affect", "normal thyroid function"),
        vitals={},
        tests=(
            "PHQ-9",
            "suicide risk assessment",
            "TSH and complete blood count to exclude medical causes",
        ),
        management="psychotherapy such as cognitive behavioral therapy and/or an SSRI, with "
        "safety planning and review in 2-4 weeks",
        differentials=("primary hypothyroidism", "bipolar disorder", "iron-deficiency anemia"),
        clue="two weeks of low mood and loss of interest with sleep and energy changes",
        self_care="Talking therapy, medicine or both can help. Regular sleep, daily activity and "
        "staying in touch with people you trust support recovery.",
        red_flags="If you have thoughts of harming yourself, call emergency services or a crisis "
        "line now, or go to the nearest emergency department.",
        drug="sertraline",
        drug_use="Sertraline is an SSRI antidepressant. It gradually balances brain chemicals "
        "linked to mood; it often takes 2-6 weeks to help.",
        drug_side="Nausea, headache and sleep changes are common early and usually settle. Do not "
        "stop it suddenly. Tell your team if you feel more agitated or have dark thoughts.",
    ),
    Condition(
        name="acute cholecystitis",
        lay="an inflamed gallbladder",
        about="Cholecystitis is inflammation of the gallbladder, usually because a gallstone "
        "blocks its outlet. It causes constant pain under the right ribs.",
        ages=(30, 80),
        sexes="FFM",
        symptoms=(
            "constant right upper quadrant pain",
            "pain after fatty meals",
            "nausea",
            "vomiting",
            "fever",
            "pain radiating to the right shoulder",
        ),
        findings=(
            "positive Murphy sign",
            "right upper quadrant tenderness",
            "white cell count of 13.5 x10^9/L",
        ),
        vitals={"temp": (37.8, 38.8), "hr": (94.0, 112.0)},
        tests=(
            "right upper quadrant ultrasound",
            "complete blood count",
            "liver function tests",
            "lipase",
        ),
        management="nil by mouth, intravenous fluids, analgesia, antibiotics and surgical review "
        "for early cholecystectomy",
        differentials=(
            "gastroesophageal reflux disease",
            "acute appendicitis",
            "acute pancreatitis",
        ),
        clue="fever and right upper quadrant pain with a positive Murphy sign",
        self_care="Treatment is usually in hospital with fluids, pain relief and antibiotics, "
        "followed by an operation to remove the gallbladder.",
        red_flags="Go to the emergency department for severe belly pain, yellow skin or eyes, "
        "high fever with shivers, or vomiting that will not stop.",
        drug="intravenous antibiotics",
        drug_use="Antibiotics through a drip treat infection in and around the gallbladder until "
        "it can be removed.",
        drug_side="Some people get nausea or loose stools. Tell the team at once about rash, "
        "itching or breathing trouble.",
    ),
    Condition(
        name="pulmonary embolism",
        onset="hours",
        lay="a blood clot in the lung",
        about="A pulmonary embolism is a blood clot that has travelled to the lungs, usually from "
        "a leg vein. It blocks blood flow and can be serious.",
        ages=(25, 85),
        sexes="FM",
        symptoms=(
            "sudden shortness of breath",
            "pleuritic chest pain",
            "hemoptysis",
            "lightheadedness",
            "recent long-haul travel",
        ),
        findings=("clear lung fields", "swollen left calf", "sinus tachycardia on ECG"),
        vitals={"hr": (104.0, 126.0), "rr": (22.0, 28.0), "spo2": (88.0, 94.0)},
        tests=("Wells score", "D-dimer if probability is low", "CT pulmonary angiography", "ECG"),
        management="prompt anticoagulation unless contraindicated, oxygen as needed, and "
        "escalation for thrombolysis if the patient is unstable",
        differentials=("community-acquired pneumonia", "acute coronary syndrome", "pneumothorax"),
        clue="sudden breathlessness, pleuritic pain, tachycardia and hypoxia with clear lungs",
        self_care="Treatment is a blood thinner for at least three months. Breathlessness often "
        "improves over weeks; gentle activity is usually encouraged.",
        red_flags="Call emergency services for worse breathlessness, chest pain, coughing blood "
        "or fainting, or any heavy bleeding on your blood thinner.",
        drug="rivaroxaban",
        drug_use="Rivaroxaban is a blood thinner. It stops the clot getting bigger and prevents "
        "new clots while your body dissolves the existing one.",
        drug_side="Bleeding is the main risk. Take it with food at the same time each day and do "
        "not stop it without advice.",
    ),
    Condition(
        name="atrial fibrillation",
        lay="atrial fibrillation",
        about="Atrial fibrillation is an irregular heartbeat. The top chambers of the heart "
        "quiver instead of beating properly, which raises the risk of stroke.",
        ages=(55, 90),
        sexes="FM",
        symptoms=(
            "palpitations",
            "irregular heartbeat",
            "exertional breathlessness",
            "fatigue",
            "dizziness",
        ),
        findings=(
            "irregularly irregular pulse",
            "absent P waves on ECG",
            "pulse deficit at the apex",
        ),
        vitals={"hr": (108.0, 136.0)},
        tests=("12-lead ECG", "TSH", "basic metabolic panel", "echocardiogram"),
        management="rate control with a beta blocker or calcium channel blocker and "
        "anticoagulation guided by a stroke-risk score such as CHA2DS2-VASc",
        differentials=("Graves disease", "acute decompensated heart failure", "pulmonary embolism"),
        clue="an irregularly irregular pulse with absent P waves",
        self_care="Medicines slow the heart rate and a blood thinner lowers stroke risk. Limit "
        "alcohol and caffeine if they trigger it.",
        red_flags="Call emergency services for sudden face drooping, arm weakness, slurred speech, "
        "chest pain or fainting.",
        drug="bisoprolol",
        drug_use="Bisoprolol is a beta blocker. It slows your heart rate so the heart pumps more "
        "efficiently.",
        drug_side="It can cause tiredness, cold hands and dizziness when standing. Do not stop it "
        "suddenly.",
    ),
    Condition(
        name="allergic rhinitis",
        onset="weeks",
        lay="hay fever",
        about="Hay fever is an allergy where the lining of your nose reacts to pollen, dust mites "
        "or pets, causing sneezing and a runny, itchy nose.",
        ages=(8, 60),
        sexes="FM",
        symptoms=(
            "sneezing",
            "clear rhinorrhea",
            "nasal congestion",
            "itchy eyes",
            "seasonal symptoms",
        ),
        findings=("pale, boggy nasal mucosa", "allergic shiners", "clear nasal discharge"),
        vitals={},
        tests=("clinical diagnosis", "allergy skin prick or specific IgE testing if unclear"),
        management="allergen avoidance, an intranasal corticosteroid and a non-sedating "
        "antihistamine as needed",
        differentials=(
            "viral upper respiratory infection",
            "chronic sinusitis",
            "asthma exacerbation",
        ),
        clue="seasonal sneezing, itchy eyes and pale boggy nasal mucosa",
        self_care="A steroid nasal spray used every day works best, with an antihistamine on "
        "bad days. Keeping windows closed on high-pollen days helps.",
        red_flags="See a doctor if you develop wheeze, facial pain with fever, or symptoms that do "
        "not improve with treatment.",
        drug="cetirizine",
        drug_use="Cetirizine is an antihistamine. It blocks histamine, the chemical that causes "
        "sneezing and itching in an allergic reaction.",
        drug_side="It is usually non-drowsy, but some people feel sleepy. Avoid alcohol if it "
        "makes you drowsy.",
    ),
    Condition(
        name="knee osteoarthritis",
        onset="weeks",
        lay="knee osteoarthritis",
        about="Osteoarthritis is wear and repair in a joint. The cartilage thins, so the knee "
        "becomes painful and stiff, especially after use.",
        ages=(50, 88),
        sexes="FM",
        symptoms=(
            "knee pain worse with activity",
            "morning stiffness under 30 minutes",
            "crepitus",
            "reduced walking distance",
        ),
        findings=(
            "bony enlargement of the knee",
            "crepitus on movement",
            "small effusion",
            "reduced range of flexion",
        ),
        vitals={},
        tests=("clinical diagnosis", "weight-bearing knee X-ray if the picture is unclear"),
        management="exercise therapy, weight loss if needed, paracetamol or a topical NSAID, "
        "and physiotherapy",
        differentials=("acute gout flare", "rheumatoid arthritis", "septic arthritis"),
        clue="activity-related knee pain with brief morning stiffness and crepitus",
        self_care="Strengthening exercises, staying active, a healthy weight and a gel painkiller "
        "rubbed on the knee are the mainstays.",
        red_flags="Get seen promptly if the knee becomes hot, red and very swollen, especially "
        "with fever, or if you cannot bear weight.",
        drug="diclofenac gel",
        drug_use="Diclofenac gel is an anti-inflammatory rubbed on the skin over the joint. It "
        "eases pain with less stomach risk than tablets.",
        drug_side="It can irritate the skin. Wash your hands after use and do not apply to "
        "broken skin.",
    ),
)
"""The knowledge table: 25 common conditions, general textbook level, in our own words."""

_BY_NAME: dict[str, Condition] = {c.name: c for c in CONDITIONS}

# ---------------------------------------------------------------- fictional people and places

_FIRST_HEADS = (
    "Tar",
    "Quen",
    "Vel",
    "Oro",
    "Zan",
    "Brix",
    "Fen",
    "Mor",
    "Ysel",
    "Kal",
    "Dru",
    "Sab",
    "Teo",
    "Wyn",
    "Lor",
    "Ix",
    "Nim",
    "Pell",
    "Rua",
    "Jor",
)
_FIRST_TAILS = (
    "lo",
    "by",
    "wen",
    "ric",
    "dra",
    "vek",
    "mira",
    "sto",
    "ael",
    "una",
    "dix",
    "oth",
    "ella",
    "ander",
    "ic",
)
_LAST_HEADS = (
    "Ven",
    "Quill",
    "Grell",
    "Orm",
    "Drab",
    "Yarr",
    "Zell",
    "Throck",
    "Murl",
    "Skarb",
    "Pell",
    "Vox",
    "Harrow",
    "Brindle",
    "Cask",
    "Tumble",
)
_LAST_TAILS = (
    "brick",
    "wattle",
    "stave",
    "quist",
    "vane",
    "fetch",
    "mire",
    "dell",
    "krane",
    "bottle",
    "snide",
    "wick",
    "thorn",
    "gale",
)
_PLACE_HEADS = (
    "Glim",
    "Bramble",
    "Nettle",
    "Cinder",
    "Moss",
    "Thimble",
    "Wend",
    "Quarry",
    "Lantern",
    "Fernhollow",
)
_PLACE_TAILS = ("mere", "vale", "brook", "stead", "fold", "reach")
_PLACE_KINDS = (
    "Community Clinic",
    "Family Practice",
    "Urgent Care",
    "Medical Center",
    "Health Hub",
)

_FIRST_VISIT = datetime.date(2091, 1, 1)
_VISIT_SPAN_DAYS = 3 * 365
_N_PATIENTS = 400


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Patient:
    pid: str
    first: str
    last: str
    sex: str
    dob: datetime.date
    mrn: str
    phone: str

    def age_on(self, day: datetime.date) -> int:
        before_birthday = (day.month, day.day) < (self.dob.month, self.dob.day)
        return day.year - self.dob.year - int(before_birthday)


def _person_name(rng: random.Random) -> tuple[str, str]:
    first = rng.choice(_FIRST_HEADS) + rng.choice(_FIRST_TAILS)
    last = rng.choice(_LAST_HEADS) + rng.choice(_LAST_TAILS)
    return first, last


def _patients(seed: int) -> list[_Patient]:
    rng = random.Random(f"{seed}-patients")
    oldest = datetime.date(2001, 1, 1)
    span = (datetime.date(2089, 1, 1) - oldest).days
    people = []
    for number in range(1, _N_PATIENTS + 1):
        first, last = _person_name(rng)
        people.append(
            _Patient(
                pid=f"P-{number:04d}",
                first=first,
                last=last,
                sex=rng.choice("FM"),
                dob=oldest + datetime.timedelta(days=rng.randrange(span)),
                mrn=f"FAKE-{rng.randrange(10**6):06d}",
                phone=f"555-01{rng.randrange(100):02d}",
            )
        )
    return people


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Case:
    """One sampled encounter: the single source of every fact a record states."""

    patient: _Patient
    condition: Condition
    visit: datetime.date
    age: int
    symptoms: tuple[str, ...]
    findings: tuple[str, ...]
    vitals: dict[str, float]
    duration: str

    @property
    def noun(self) -> str:
        if self.age < 18:
            return "girl" if self.patient.sex == "F" else "boy"
        return "woman" if self.patient.sex == "F" else "man"

    @property
    def features(self) -> str:
        """The sampled presentation in a phrase: two symptoms and the first finding."""
        return f"{_join(self.symptoms[:2])} with {self.findings[0]}"

    @property
    def a_age(self) -> str:
        article = "an" if str(self.age).startswith("8") or self.age in (11, 18) else "a"
        return f"{article} {self.age}-year-old"


_NORMAL_VITALS: dict[str, tuple[float, float]] = {
    "temp": (36.4, 37.3),
    "hr": (62.0, 90.0),
    "sbp": (108.0, 134.0),
    "dbp": (64.0, 84.0),
    "rr": (12.0, 18.0),
    "spo2": (96.0, 99.0),
}
_CHILD_VITALS: dict[str, tuple[float, float]] = {
    "hr": (82.0, 110.0),
    "sbp": (92.0, 110.0),
    "dbp": (54.0, 70.0),
    "rr": (16.0, 20.0),
}


def _sample_vitals(rng: random.Random, condition: Condition, age: int) -> dict[str, float]:
    ranges = dict(_NORMAL_VITALS)
    if age < 12:
        ranges.update(_CHILD_VITALS)
    ranges.update(condition.vitals)
    vitals = {}
    for key, (low, high) in ranges.items():
        value = rng.uniform(low, high)
        vitals[key] = round(value, 1) if key == "temp" else float(round(value))
    return vitals


def _duration(rng: random.Random, onset: str) -> str:
    if onset == "hours":
        count, unit = rng.choice((6, 8, 10, 12, 18, 24, 36)), "hours"
    elif onset == "weeks":
        count, unit = rng.randint(2, 12), "weeks"
    else:
        count, unit = rng.randint(1, 7), "days"
    return f"1 {unit[:-1]}" if count == 1 else f"{count} {unit}"


def _sample_case(
    rng: random.Random, people: list[_Patient], condition: Condition, min_age: int = 0
) -> _Case:
    visit = _FIRST_VISIT + datetime.timedelta(days=rng.randrange(_VISIT_SPAN_DAYS))
    low, high = condition.ages
    if min_age <= high:
        low = max(low, min_age)
    sex = rng.choice(condition.sexes)
    fits = [p for p in people if p.sex == sex and low <= p.age_on(visit) <= high]
    patient = rng.choice(fits)
    age = patient.age_on(visit)
    n_symptoms = min(len(condition.symptoms), rng.randint(2, 4))
    n_findings = min(len(condition.findings), rng.randint(1, 2))
    return _Case(
        patient=patient,
        condition=condition,
        visit=visit,
        age=age,
        symptoms=tuple(rng.sample(condition.symptoms, n_symptoms)),
        findings=tuple(rng.sample(condition.findings, n_findings)),
        vitals=_sample_vitals(rng, condition, age),
        duration=_duration(rng, condition.onset),
    )


# ---------------------------------------------------------------- phrasing helpers


def _join(items: tuple[str, ...] | list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _vitals_line(v: dict[str, float]) -> str:
    return (
        f"T {v['temp']:.1f} C, HR {v['hr']:.0f}, BP {v['sbp']:.0f}/{v['dbp']:.0f}, "
        f"RR {v['rr']:.0f}, SpO2 {v['spo2']:.0f}% on room air"
    )


def _abnormal_vitals(v: dict[str, float], age: int) -> list[str]:
    """Plain statements of the out-of-range vitals, computed from the same numbers."""
    notes = []
    if v["temp"] >= 38.0:
        notes.append(f"fever to {v['temp']:.1f} C")
    if age >= 12 and v["hr"] > 100:
        notes.append(f"tachycardia at {v['hr']:.0f}/min")
    if age >= 12 and v["hr"] < 60:
        notes.append(f"bradycardia at {v['hr']:.0f}/min")
    if age >= 12 and (v["sbp"] >= 140 or v["dbp"] >= 90):
        notes.append(f"blood pressure of {v['sbp']:.0f}/{v['dbp']:.0f}")
    if age >= 12 and v["rr"] > 20:
        notes.append(f"respiratory rate of {v['rr']:.0f}")
    if v["spo2"] < 95:
        notes.append(f"oxygen saturation of {v['spo2']:.0f}% on room air")
    return notes


_SYSTEM_PROMPTS: dict[str, tuple[str, ...]] = {
    "summarization": (
        "You are a careful clinical assistant. Summarize notes accurately and concisely.",
        "You are a clinical documentation assistant. Write short, faithful summaries and add "
        "nothing that is not in the note.",
        "You summarize clinical notes for busy clinicians. Be brief and accurate.",
    ),
    "diagnosis_qa": (
        "You are a careful clinical assistant. Answer concisely and recommend clinician review "
        "when appropriate.",
        "You are a clinical decision-support assistant. Reason from the findings given and "
        "remind the user that a clinician must confirm.",
        "You help clinicians think through presentations. Be concise and cautious.",
    ),
    "patient_education": (
        "You are a friendly health educator. Use plain language, avoid jargon and encourage "
        "people to contact their care team when unsure.",
        "You explain health topics to patients in simple, kind words. You do not replace a "
        "clinician.",
        "You are a patient education assistant. Keep answers short, clear and safe.",
    ),
    "multiple_choice": (
        "You are a medical exam tutor. Give the letter of the best answer, then a one-sentence "
        "explanation.",
        "Answer the multiple-choice question with the correct option and a brief reason.",
        "You are a careful clinical assistant answering board-style questions concisely.",
    ),
}
_NO_SYSTEM_RATE = 0.15


def _messages(rng: random.Random, task: str, turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    messages = []
    if rng.random() >= _NO_SYSTEM_RATE:
        messages.append({"role": "system", "content": rng.choice(_SYSTEM_PROMPTS[task])})
    messages.extend({"role": role, "content": content} for role, content in turns)
    return messages


def _record(task: str, case: _Case, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    return {"task": task, "patient_id": case.patient.pid, "messages": messages, **extra}


# ---------------------------------------------------------------- task 1: summarization

_HISTORY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("hypertension", ("lisinopril {5|10|20} mg daily", "amlodipine {5|10} mg daily")),
    ("hyperlipidemia", ("atorvastatin {10|20|40} mg nightly", "rosuvastatin {5|10} mg daily")),
    ("type 2 diabetes", ("metformin {500|1000} mg twice daily",)),
    ("hypothyroidism", ("levothyroxine {50|75|100} mcg daily",)),
    ("GERD", ("omeprazole {20|40} mg daily", "pantoprazole 40 mg daily")),
    (
        "asthma",
        (
            "albuterol inhaler 2 puffs every 4-6 hours as needed",
            "budesonide-formoterol inhaler 2 puffs twice daily",
        ),
    ),
    ("depression", ("sertraline {50|100} mg daily", "escitalopram {10|20} mg daily")),
    ("osteoarthritis", ("acetaminophen {500|650} mg up to three times daily as needed",)),
    ("allergic rhinitis", ("cetirizine 10 mg daily", "fluticasone nasal spray 2 sprays daily")),
    ("gout", ("allopurinol {100|300} mg daily",)),
)
_ALLERGIES = (
    "no known drug allergies",
    "no known drug allergies",
    "penicillin (rash)",
    "sulfonamides (hives)",
    "codeine (nausea)",
    "latex (contact dermatitis)",
)
_SENTENCE_END = (".", "!", "?")
_SOCIAL = (
    "Social: non-smoker, drinks alcohol rarely, lives with a partner.",
    "Social: ex-smoker, works as a delivery driver, lives alone.",
    "Social: never smoked, retired teacher, walks daily.",
    "Social: smokes 10 cigarettes a day, office worker, two children.",
    "Social: lives with parents, attends school, no smoke exposure at home.",
)
_MIN_NOTE_WORDS = 80
_NOTE_KINDS = ("Clinic note", "Progress note", "Urgent care note", "Visit note", "Encounter note")


def _medication(rng: random.Random, template: str) -> str:
    head, brace, rest = template.partition("{")
    if not brace:
        return template
    options, _, tail = rest.partition("}")
    return head + rng.choice(options.split("|")) + tail


def _history(rng: random.Random, case: _Case) -> list[tuple[str, str]]:
    if case.age < 18:
        return []
    excluded = case.condition.name + " " + case.condition.lay
    pool = [item for item in _HISTORY if item[0] not in excluded]
    picked = rng.sample(pool, rng.choice((0, 1, 1, 2, 2, 3)))
    return [(label, _medication(rng, rng.choice(meds))) for label, meds in picked]


def _identifier_lines(rng: random.Random, case: _Case) -> list[str]:
    p = case.patient
    title = "" if case.age < 18 else ("Ms. " if p.sex == "F" else "Mr. ")
    mrn = p.mrn
    doc_first, doc_last = _person_name(rng)
    place = f"{rng.choice(_PLACE_HEADS)}{rng.choice(_PLACE_TAILS)} {rng.choice(_PLACE_KINDS)}"
    lines = [
        rng.choice(
            (
                f"Patient: {title}{p.first} {p.last} | MRN: {mrn} | DOB: {p.dob.isoformat()}",
                f"Name: {p.first} {p.last}, DOB {p.dob.isoformat()}, MRN {mrn}",
                f"{title}{p.first} {p.last} (MRN {mrn}, born {p.dob.isoformat()})",
            )
        )
    ]
    lines.append(f"Seen {case.visit.isoformat()} at {place} by Dr. {doc_first} {doc_last}.")
    if rng.random() < 0.6:
        phone = p.phone
        email = f"{p.first.lower()}.{p.last.lower()}@example.org"
        lines.append(
            rng.choice(
                (
                    f"Contact: {phone}, {email}.",
                    f"Phone {phone}; e-mail {email}.",
                    f"Best contact number {phone}.",
                )
            )
        )
    return lines


def _note(
    rng: random.Random,
    case: _Case,
    history: list[tuple[str, str]],
    allergy: str,
    plan_tests: tuple[str, ...],
    follow_up: int,
) -> str:
    c = case.condition
    who = rng.choice(("Patient", "Pt", "The patient"))
    past = f" with a history of {_join([h[0] for h in history])}" if history else ""
    hpi = rng.choice(
        (
            f"{who} is {case.a_age} {case.noun}{past} presenting with {case.duration} of "
            f"{_join(case.symptoms)}.",
            f"{_cap(case.a_age)} {case.noun}{past} reports {_join(case.symptoms)} for "
            f"{case.duration}.",
            f"{case.duration.capitalize()} of {_join(case.symptoms)} in {case.a_age} "
            f"{case.noun}{past}.",
        )
    )
    hpi += " " + rng.choice(
        (
            "No recent travel.",
            "Symptoms are gradually worsening.",
            "Tried rest without relief.",
            "Came in at a relative's urging.",
            "Otherwise feels well.",
            "Sleep is disturbed.",
        )
    )
    meds = "; ".join(h[1] for h in history) if history else "none"
    assessment = rng.choice(("likely", "most consistent with", "suspected", "working diagnosis:"))
    lines = [f"{rng.choice(_NOTE_KINDS)}:"]
    if rng.random() < 0.65:
        lines += _identifier_lines(rng, case)
    lines += [
        f"{rng.choice(('HPI', 'History', 'Subjective'))}: {hpi}",
        f"Vitals: {_vitals_line(case.vitals)}.",
        f"{rng.choice(('Findings', 'Objective', 'Exam/results'))}: {'; '.join(case.findings)}.",
        f"{rng.choice(('Medications', 'Meds', 'Current medications'))}: {meds}.",
        f"Allergies: {allergy}.",
        f"Assessment: {assessment} {c.name}.",
        f"Plan: {_join(plan_tests)}; {c.management}. Follow-up in {follow_up} days.",
    ]
    if len(" ".join(lines).split()) < _MIN_NOTE_WORDS:
        social = _SOCIAL[-1] if case.age < 18 else rng.choice(_SOCIAL[:-1])
        lines.insert(-3, social)
    return "\n".join(lines)


def _count_sentences(text: str) -> int:
    """Sentences end with ``.``, ``!`` or ``?`` followed by a space or the end of the text."""
    return sum(
        1
        for i, ch in enumerate(text)
        if ch in _SENTENCE_END and (i + 1 == len(text) or text[i + 1].isspace())
    )


def _summary(
    rng: random.Random,
    case: _Case,
    history: list[tuple[str, str]],
    allergy: str,
    plan_tests: tuple[str, ...],
) -> str:
    c = case.condition
    past = f" with a history of {_join([h[0] for h in history])}" if history else ""
    opening = rng.choice(
        (
            f"{_cap(case.a_age)} {case.noun}{past} presenting with {case.duration} of "
            f"{_join(case.symptoms)}.",
            f"{_cap(case.a_age)} {case.noun}{past} seen for {_join(case.symptoms)} over "
            f"{case.duration}.",
        )
    )
    abnormal = _abnormal_vitals(case.vitals, case.age)
    finding = _join(case.findings)
    if abnormal:
        exam = rng.choice(
            (
                f"Vitals notable for {_join(abnormal)}; findings included {finding}.",
                f"Work-up found {finding}, with {_join(abnormal)}.",
            )
        )
    else:
        exam = rng.choice(
            (
                f"Vitals were within normal limits and findings included {finding}.",
                f"Work-up found {finding}; vitals were unremarkable.",
            )
        )
    plan = rng.choice(
        (
            f"Assessment is {c.name}; plan includes {_join(plan_tests)} and {c.management}.",
            f"The working diagnosis is {c.name}, managed with {c.management} after "
            f"{_join(plan_tests)}.",
            f"Findings are most consistent with {c.name}. Plan: {_join(plan_tests)}, then "
            f"{c.management}.",
        )
    )
    sentences = [opening, exam, plan]
    if rng.random() < 0.3 and _count_sentences(plan) == 1:
        meds = f"Takes {_join([h[1] for h in history])}" if history else "No regular medications"
        allergic = allergy if allergy.startswith("no ") else f"allergic to {allergy}"
        sentences.append(f"{meds}; {allergic}.")
    return " ".join(sentences)


_SUMMARY_ASKS = (
    "Summarize this note in a few sentences.",
    "Please write a concise summary of the following clinical note.",
    "Give me a brief summary of this note for handover.",
    "Can you condense this note into 2-4 sentences?",
    "Summarize the key points of this encounter.",
)


def _summarization(rng: random.Random, people: list[_Patient], index: int) -> dict[str, Any]:
    case = _sample_case(rng, people, CONDITIONS[index % len(CONDITIONS)])
    history = _history(rng, case)
    allergy = rng.choice(_ALLERGIES)
    plan_tests = tuple(rng.sample(case.condition.tests[:3], min(2, len(case.condition.tests))))
    note = _note(rng, case, history, allergy, plan_tests, rng.choice((2, 3, 5, 7, 14)))
    summary = _summary(rng, case, history, allergy, plan_tests)
    ask = rng.choice(_SUMMARY_ASKS)
    user = f"{ask}\n\n{note}" if rng.random() < 0.7 else f"{note}\n\n{ask}"
    messages = _messages(rng, "summarization", [("user", user), ("assistant", summary)])
    return _record("summarization", case, messages, note=note, summary=summary)


# ---------------------------------------------------------------- task 2: diagnosis Q&A

_CONFIRM = (
    "A clinician must confirm the diagnosis and plan after assessing the patient.",
    "This is decision support only; a clinician must confirm it in person.",
    "Please have a clinician review and confirm before acting on this.",
    "Final diagnosis and treatment must be confirmed by the treating clinician.",
)


def _presentation(rng: random.Random, case: _Case) -> str:
    opening = rng.choice(
        (
            f"{_cap(case.a_age)} {case.noun} presents with {_join(case.symptoms)} for "
            f"{case.duration}.",
            f"{_cap(case.a_age)} {case.noun} reports {case.duration} of {_join(case.symptoms)}.",
            f"I am seeing {case.a_age} {case.noun} with {_join(case.symptoms)} over the past "
            f"{case.duration}.",
        )
    )
    exam = rng.choice(("Findings include", "Evaluation shows", "Initial work-up shows"))
    text = f"{opening} {exam} {_join(case.findings)}."
    if rng.random() < 0.7:
        text += f" Vitals: {_vitals_line(case.vitals)}."
    return text


def _diagnosis_qa(rng: random.Random, people: list[_Patient], index: int) -> dict[str, Any]:
    c = CONDITIONS[index % len(CONDITIONS)]
    case = _sample_case(rng, people, c)
    kind = ("diagnosis", "differential", "next_step")[(index // len(CONDITIONS)) % 3]
    tests = _join(c.tests[:3])
    name = _cap(c.name)
    if kind == "diagnosis":
        ask = rng.choice(
            (
                "What is the most likely diagnosis?",
                "Which diagnosis fits best?",
                "What do you think is going on, and how would you start?",
            )
        )
        answer = rng.choice(
            (
                f"Most likely diagnosis: {c.name}. Supporting features: {case.features}. "
                f"First tests: {tests}. Initial management: {c.management}.",
                f"{name} is the most likely diagnosis, given {case.features}. Start with {tests}, "
                f"then {c.management}.",
            )
        )
    elif kind == "differential":
        ask = rng.choice(
            (
                "What is the differential diagnosis?",
                "Give me the leading diagnosis and what else to consider.",
                "What should be on the differential here?",
            )
        )
        answer = rng.choice(
            (
                f"Leading diagnosis: {c.name}, because of {case.features}. Also consider "
                f"{_join(c.differentials)}. Useful first tests: {tests}.",
                f"The picture fits {c.name} best (classically {c.clue}). The differential includes "
                f"{_join(c.differentials)}; {tests} help to separate them.",
            )
        )
    else:
        ask = rng.choice(
            (
                "What are the appropriate next steps?",
                "What should be done first?",
                "How would you work this up and treat it?",
            )
        )
        answer = rng.choice(
            (
                f"This suggests {c.name}. Next steps: {tests}. If confirmed, {c.management}.",
                f"Suspect {c.name} given {case.features}. Work-up: {tests}. First-line management: "
                f"{c.management}.",
            )
        )
    question = f"{_presentation(rng, case)} {ask}"
    answer = f"{answer}\n{rng.choice(_CONFIRM)}"
    messages = _messages(rng, "diagnosis_qa", [("user", question), ("assistant", answer)])
    return _record(
        "diagnosis_qa", case, messages, question=question, answer=answer, condition=c.name
    )


# ---------------------------------------------------------------- task 3: patient education

_ASK: dict[str, tuple[str, ...]] = {
    "what": (
        "My doctor said I have {lay}. What is that exactly?",
        "Can you explain what {lay} is in simple words?",
        "I was just told it's {lay}. What does that mean?",
        "What is {lay}? I don't really understand it.",
    ),
    "child": (
        "My child was told they have {lay}. What is that?",
        "The doctor says my kid has {lay}. Can you explain it simply?",
    ),
    "treat": (
        "How is it treated, and what can I do at home?",
        "Is there anything I can do to help myself get better?",
        "What does treatment usually involve?",
    ),
    "flags": (
        "When should I go back to the doctor or call for help?",
        "What signs mean I need urgent care?",
        "What should I watch out for?",
    ),
    "med_what": (
        "I was started on {drug} for {lay}. What does it do?",
        "Why would I be given {drug} for {lay}?",
        "The clinic prescribed {drug} because of {lay}. How does it work?",
    ),
    "med_side": (
        "Are there side effects I should know about?",
        "Anything I should watch for while taking it?",
        "Is it safe? What are the common side effects?",
    ),
}
_OPENERS = ("", "", "Good question. ", "Of course. ", "In plain terms: ", "Sure. ")
_CLOSERS = (
    "",
    "",
    " Your own care team can tailor this advice to you.",
    " If you are unsure, contact your care team.",
)


def _education(rng: random.Random, people: list[_Patient], index: int) -> dict[str, Any]:
    c = CONDITIONS[index % len(CONDITIONS)]
    case = _sample_case(rng, people, c, min_age=16)
    answers = {
        "what": c.about,
        "child": c.about,
        "treat": c.self_care,
        "flags": c.red_flags,
        "med_what": c.drug_use,
        "med_side": c.drug_side,
    }
    if rng.random() < 0.35:
        plan = ["med_what", "med_side"] + (["flags"] if rng.random() < 0.5 else [])
    else:
        first = "child" if case.age < 16 else "what"
        plan = rng.choice(([first, "treat", "flags"], [first, "flags"], [first, "treat"]))
    turns = []
    for kind in plan:
        ask = rng.choice(_ASK[kind]).format(lay=c.lay, drug=c.drug)
        turns.append(("user", _cap(ask)))
        turns.append(("assistant", rng.choice(_OPENERS) + answers[kind] + rng.choice(_CLOSERS)))
    messages = _messages(rng, "patient_education", turns)
    return _record("patient_education", case, messages, condition=c.name)


# ---------------------------------------------------------------- task 4: multiple choice

_LETTERS = ("A", "B", "C", "D")


def _distractors(
    rng: random.Random, correct: str, preferred: list[str], pool: list[str]
) -> list[str]:
    picked = [x for x in preferred if x != correct][:3]
    rest = [x for x in pool if x != correct and x not in picked]
    return picked + rng.sample(rest, 3 - len(picked))


def _multiple_choice(
    rng: random.Random, people: list[_Patient], index: int, letter: str
) -> dict[str, Any]:
    c = CONDITIONS[index % len(CONDITIONS)]
    case = _sample_case(rng, people, c)
    vignette = (
        f"{_cap(case.a_age)} {case.noun} presents with {case.duration} of "
        f"{_join(case.symptoms)}. Findings include {_join(case.findings)}. "
        f"Vitals: {_vitals_line(case.vitals)}."
    )
    testable = not c.tests[0].startswith("clinical")
    if testable and rng.random() < 0.3:
        stem = rng.choice(
            (
                "Which of the following is the most appropriate initial test?",
                "What is the best first investigation?",
            )
        )
        correct = c.tests[0]
        pool = [
            o.tests[0]
            for o in CONDITIONS
            if not o.tests[0].startswith("clinical") and o.tests[0] not in c.tests
        ]
        wrong = _distractors(rng, correct, [], sorted(set(pool)))
        explanation = (
            f"The picture of {case.features} suggests {c.name}, and {correct} is "
            "the key first test."
        )
    else:
        stem = rng.choice(
            (
                "Which of the following is the most likely diagnosis?",
                "What is the most likely diagnosis?",
                "Which condition best explains this presentation?",
            )
        )
        correct = c.name
        in_table = [d for d in c.differentials if d in _BY_NAME]
        wrong = _distractors(
            rng, correct, rng.sample(in_table, len(in_table)), [o.name for o in CONDITIONS]
        )
        explanation = f"The picture of {case.features} points to {c.name} rather than {wrong[0]}."
    rng.shuffle(wrong)
    texts = wrong[:]
    texts.insert(_LETTERS.index(letter), correct)
    options = {key: _cap(text) for key, text in zip(_LETTERS, texts, strict=True)}
    question = f"{vignette} {stem}"
    shown = "\n".join(f"{key}. {text}" for key, text in options.items())
    reply = f"{letter}. {options[letter]}\n{explanation}"
    messages = _messages(
        rng, "multiple_choice", [("user", f"{question}\n{shown}"), ("assistant", reply)]
    )
    return _record(
        "multiple_choice",
        case,
        messages,
        question=question,
        options=options,
        answer=letter,
        answer_text=options[letter],
        condition=c.name,
    )


def _letters(rng: random.Random, count: int) -> list[str]:
    """Answer letters, balanced: each block of four is a shuffled A-D."""
    letters: list[str] = []
    while len(letters) < count:
        block = list(_LETTERS)
        rng.shuffle(block)
        letters += block
    return letters[:count]


# ---------------------------------------------------------------- public API

_Builder = Callable[[random.Random, list[_Patient], int], dict[str, Any]]


def generate_records(seed: int = 0, n_per_task: int | None = None) -> list[dict[str, Any]]:
    """Generate the synthetic, fictional clinical dataset.

    Each task draws from its own ``random.Random`` seeded from ``seed`` and the task name, so the
    output is identical on every platform and Python build for the same arguments.

    Args:
        seed: Seed of every random choice.
        n_per_task: Records per task; ``None`` uses the shipped counts in `TASK_COUNTS`.

    Returns:
        Records in file order, each with ``id``, ``task``, ``patient_id``, ``messages`` and the
        task's extra fields, keys in that order.
    """
    people = _patients(seed)
    builders: dict[str, _Builder] = {
        "summarization": _summarization,
        "diagnosis_qa": _diagnosis_qa,
        "patient_education": _education,
    }
    records: list[dict[str, Any]] = []
    for task, default_count in TASK_COUNTS.items():
        count = default_count if n_per_task is None else n_per_task
        rng = random.Random(f"{seed}-{task}")
        if task == "multiple_choice":
            letters = _letters(rng, count)
            records += [_multiple_choice(rng, people, i, letters[i]) for i in range(count)]
        else:
            records += [builders[task](rng, people, i) for i in range(count)]
    return [{"id": f"syn-{n:05d}", **record} for n, record in enumerate(records, start=1)]


def write_default(path: Path) -> None:
    """Write ``generate_records()`` to ``path`` as UTF-8 JSON Lines, atomically.

    Args:
        path: Destination file; its parent directory is created if needed.
    """
    with atomic_file(path) as handle:
        for record in generate_records():
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    path.chmod(0o644)  # package data: readable by all, unlike the private temp file


if __name__ == "__main__":
    write_default(DEFAULT_PATH)
    print(f"wrote {DEFAULT_PATH}")
