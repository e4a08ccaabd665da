//! A realistic, seeded stream of interaction events.
//!
//! A population of contacts with Zipf-like activity (a few contacts do most
//! of the interacting) and three personas:
//!
//! - **browsers** read the blog and open the odd email, and never buy;
//! - **researchers** read docs and tutorials, download ebooks, sign up for
//!   the newsletter and sometimes attend a webinar;
//! - **buyers** escalate: blog -> pricing -> email click -> webinar -> demo
//!   request form -> contact sales.
//!
//! Each contact's first event is a profile update with fit facts. With
//! [`SimConfig::anonymous_share`], that share of contacts first browse as
//! anonymous visitors (`anon-…` ids, no account, no profile): a few page
//! views, then an `identify` naming the contact, after which they are known
//! (profile first, as any contact). The same seed gives the same contacts,
//! personas and sequence of events.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::proto::email_engagement::Action;
use crate::proto::interaction_event::Interaction;
use crate::proto::{
    ContentDownload, EmailEngagement, FormSubmission, InteractionEvent, PageView, ProfileUpdate, WebinarAttendance,
};
use crate::score::Millis;

/// How a contact behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persona {
    /// Reads, never buys.
    Browser,
    /// Studies the product in depth.
    Researcher,
    /// Intent escalates toward a demo request.
    Buyer,
}

/// Simulation parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of contacts.
    pub contacts: usize,
    /// Zipf exponent of activity over contacts (about 1 is typical).
    pub zipf_exponent: f64,
    /// Random seed.
    pub seed: u64,
    /// Share of buyers, in [0, 1].
    pub buyer_share: f64,
    /// Share of researchers, in [0, 1].
    pub researcher_share: f64,
    /// Share of contacts who first browse anonymously and then identify,
    /// in [0, 1].
    pub anonymous_share: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            contacts: 2000,
            zipf_exponent: 1.05,
            seed: 42,
            buyer_share: 0.15,
            researcher_share: 0.30,
            anonymous_share: 0.0,
        }
    }
}

/// Anonymous page views before an anonymous visitor identifies.
const ANONYMOUS_VISITS: [u32; 4] = [2, 3, 5, 8];
const ANONYMOUS_PAGES: &[&str] = &["/", "/blog/intent-signals", "/pricing", "/docs/api", "/blog/decay-explained"];

/// A generator of events; call [`Simulator::next_event`] for each one.
pub struct Simulator {
    rng: ChaCha8Rng,
    cdf: Vec<f64>,
    personas: Vec<Persona>,
    steps: Vec<u32>,
    /// Per contact, the anonymous page views before it identifies (0: known
    /// from the start).
    anonymous: Vec<u32>,
    accounts: usize,
    counter: u64,
    seed: u64,
}

const TITLES: &[&str] =
    &["Founder", "CTO", "VP Marketing", "Senior Manager", "Manager", "Engineer", "Analyst", "Student"];
const INDUSTRIES: &[&str] =
    &["software", "technology", "manufacturing", "retail", "finance", "education", "healthcare"];
const SIZES: &[&str] = &["1-10", "11-50", "51-200", "201-1000", "1000+"];
const COUNTRIES: &[&str] = &["US", "DE", "GB", "FR", "NL", "IN", "BR", "JP"];
const BLOG: &[&str] =
    &["/blog/lead-scoring-101", "/blog/decay-explained", "/blog/intent-signals", "/blog/sales-handoff", "/"];
const DOCS: &[&str] =
    &["/docs/tutorials/first-model", "/docs/tutorials/tiers", "/docs/api", "/docs/integrations/kafka"];

impl Simulator {
    /// A simulator for `config`.
    pub fn new(config: &SimConfig) -> Self {
        let n = config.contacts.max(1);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for rank in 1..=n {
            acc += 1.0 / (rank as f64).powf(config.zipf_exponent);
            cdf.push(acc);
        }
        for x in &mut cdf {
            *x /= acc;
        }
        let personas = (0..n)
            .map(|_| {
                let r: f64 = rng.random();
                if r < config.buyer_share {
                    Persona::Buyer
                } else if r < config.buyer_share + config.researcher_share {
                    Persona::Researcher
                } else {
                    Persona::Browser
                }
            })
            .collect();
        // A generator of its own, so a stream without anonymous visitors is
        // the same as before they existed.
        let mut visitors = ChaCha8Rng::seed_from_u64(config.seed ^ 0x616e_6f6e);
        let anonymous = (0..n)
            .map(|_| {
                let r: f64 = visitors.random();
                if r < config.anonymous_share {
                    ANONYMOUS_VISITS[visitors.random_range(0..ANONYMOUS_VISITS.len())]
                } else {
                    0
                }
            })
            .collect();
        Self {
            rng,
            cdf,
            personas,
            steps: vec![0; n],
            anonymous,
            accounts: (n / 4).max(1),
            counter: 0,
            seed: config.seed,
        }
    }

    /// The persona of contact `index`.
    pub fn persona(&self, index: usize) -> Persona {
        self.personas[index]
    }

    /// The id of contact `index`.
    pub fn contact_id(index: usize) -> String {
        format!("c-{index:06}")
    }

    /// The anonymous id contact `index` browses under before it identifies
    /// (a cookie id: nothing in it names the contact).
    pub fn anonymous_id(&self, index: usize) -> String {
        let h = crate::score::event_hash(&format!("{}/{index}", self.seed));
        format!("anon-{h:012x}")
    }

    /// The next event, stamped `at_ms`.
    pub fn next_event(&mut self, at_ms: Millis) -> InteractionEvent {
        let u: f64 = self.rng.random();
        let i = self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1);
        let mut step = self.steps[i];
        self.steps[i] += 1;
        self.counter += 1;
        let hidden = self.anonymous[i];
        let (contact_id, account_id, interaction) = if step < hidden {
            let url = ANONYMOUS_PAGES[self.rng.random_range(0..ANONYMOUS_PAGES.len())];
            (self.anonymous_id(i), String::new(), self.page(url))
        } else if hidden > 0 && step == hidden {
            let identify = crate::proto::Identify { contact_id: Self::contact_id(i) };
            (self.anonymous_id(i), String::new(), Interaction::Identify(identify))
        } else {
            if hidden > 0 {
                step -= hidden + 1;
            }
            let interaction = if step == 0 { self.profile(i) } else { self.interaction(self.personas[i], step) };
            (Self::contact_id(i), format!("acct-{:05}", i % self.accounts), interaction)
        };
        let mut context = BTreeMap::new();
        context.insert(
            "channel".to_string(),
            ["organic", "paid", "email", "social"][self.rng.random_range(0..4)].to_string(),
        );
        context.insert("source".to_string(), "hotlead-simulate".to_string());
        InteractionEvent {
            event_id: format!("sim-{}-{}", self.seed, self.counter),
            contact_id,
            account_id,
            occurred_at: Some(crate::decode::timestamp(at_ms)),
            interaction: Some(interaction),
            context,
            origin: None,
        }
    }

    fn profile(&mut self, i: usize) -> Interaction {
        let senior = self.personas[i] == Persona::Buyer;
        let title =
            if senior { TITLES[self.rng.random_range(0..4)] } else { TITLES[self.rng.random_range(0..TITLES.len())] };
        let mut attributes = BTreeMap::new();
        attributes.insert("job_title".into(), title.into());
        attributes.insert("industry".into(), INDUSTRIES[self.rng.random_range(0..INDUSTRIES.len())].into());
        attributes.insert("company_size".into(), SIZES[self.rng.random_range(0..SIZES.len())].into());
        attributes.insert("country".into(), COUNTRIES[self.rng.random_range(0..COUNTRIES.len())].into());
        Interaction::ProfileUpdate(ProfileUpdate { attributes })
    }

    fn page(&mut self, url: &str) -> Interaction {
        Interaction::PageView(PageView {
            url: url.to_string(),
            title: url.trim_start_matches('/').replace(['/', '-'], " "),
            duration_seconds: self.rng.random_range(5..400),
            referrer: String::new(),
        })
    }

    fn email(&mut self, action: Action) -> Interaction {
        Interaction::EmailEngagement(EmailEngagement {
            campaign_id: format!("nurture-{}", self.rng.random_range(1..6)),
            action: action as i32,
            link_url: if action == Action::Click { "/pricing".into() } else { String::new() },
        })
    }

    fn form(&mut self, form_id: &str) -> Interaction {
        let mut fields = BTreeMap::new();
        fields.insert("email_domain".into(), "example.com".into());
        Interaction::FormSubmission(FormSubmission { form_id: form_id.into(), fields })
    }

    fn webinar(&mut self, attended: bool) -> Interaction {
        Interaction::WebinarAttendance(WebinarAttendance {
            webinar_id: "scoring-live".into(),
            attended,
            minutes_attended: if attended { self.rng.random_range(10..60) } else { 0 },
        })
    }

    fn interaction(&mut self, persona: Persona, step: u32) -> Interaction {
        match persona {
            Persona::Browser => match self.rng.random_range(0..20) {
                0..=15 => {
                    let url = BLOG[self.rng.random_range(0..BLOG.len())];
                    self.page(url)
                }
                16..=18 => self.email(Action::Open),
                _ => self.email(Action::Unsubscribe),
            },
            Persona::Researcher => match self.rng.random_range(0..12) {
                0..=3 => {
                    let url = DOCS[self.rng.random_range(0..DOCS.len())];
                    self.page(url)
                }
                4..=5 => {
                    let url = BLOG[self.rng.random_range(0..BLOG.len())];
                    self.page(url)
                }
                6..=7 => self.email(Action::Open),
                8 => self.email(Action::Click),
                9 => Interaction::ContentDownload(ContentDownload {
                    asset_id: "ebook-lead-scoring".into(),
                    asset_type: "ebook".into(),
                }),
                10 => self.form("newsletter-signup"),
                _ => {
                    let attended = self.rng.random_bool(0.5);
                    self.webinar(attended)
                }
            },
            Persona::Buyer => match step {
                1..=2 => {
                    let url = BLOG[self.rng.random_range(0..BLOG.len())];
                    self.page(url)
                }
                3..=4 => self.page("/pricing"),
                5 => self.email(Action::Click),
                6 => self.webinar(true),
                7 => self.page("/pricing"),
                8 => self.form("demo-request"),
                _ => match self.rng.random_range(0..4) {
                    0 => self.page("/pricing"),
                    1 => {
                        let url = DOCS[self.rng.random_range(0..DOCS.len())];
                        self.page(url)
                    }
                    2 => self.email(Action::Click),
                    _ => self.form("contact-sales"),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let cfg = SimConfig::default();
        let (mut a, mut b) = (Simulator::new(&cfg), Simulator::new(&cfg));
        for i in 0..500 {
            assert_eq!(a.next_event(i), b.next_event(i));
        }
        let mut c = Simulator::new(&SimConfig { seed: 7, ..cfg });
        let differs = (0..50).any(|i| c.next_event(i).contact_id != a.next_event(i).contact_id);
        assert!(differs);
    }

    #[test]
    fn activity_is_skewed_and_buyers_escalate() {
        let cfg = SimConfig { contacts: 1000, ..SimConfig::default() };
        let mut s = Simulator::new(&cfg);
        let mut per_contact = vec![0usize; 1000];
        let mut buyer_forms = Vec::new();
        for i in 0..20_000 {
            let e = s.next_event(i);
            let idx: usize = e.contact_id[2..].parse().unwrap();
            per_contact[idx] += 1;
            if let Some(Interaction::FormSubmission(f)) = &e.interaction {
                if s.persona(idx) == Persona::Buyer && f.form_id == "demo-request" {
                    buyer_forms.push(idx);
                }
            }
        }
        let mut sorted = per_contact.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top: usize = sorted[..10].iter().sum();
        assert!(top * 5 > 20_000 / 2, "top 10 of 1000 contacts should make a large share; got {top}");
        assert!(!buyer_forms.is_empty(), "some buyers reach the demo request");
        // A buyer's demo request comes after their pricing visits (step 8).
        assert!(buyer_forms.iter().all(|&i| per_contact[i] >= 9));
    }

    #[test]
    fn anonymous_visitors_browse_then_identify_once() {
        let cfg = SimConfig { contacts: 200, anonymous_share: 0.3, ..SimConfig::default() };
        let mut s = Simulator::new(&cfg);
        let events: Vec<InteractionEvent> = (0..20_000).map(|i| s.next_event(i)).collect();
        let identifies: Vec<&InteractionEvent> =
            events.iter().filter(|e| matches!(e.interaction, Some(Interaction::Identify(_)))).collect();
        assert!((30..=90).contains(&identifies.len()), "about 30 % of 200 identify: {}", identifies.len());
        for id in &identifies {
            let Some(Interaction::Identify(i)) = &id.interaction else { unreachable!() };
            let before: Vec<&InteractionEvent> = events.iter().filter(|e| e.contact_id == id.contact_id).collect();
            assert!(before.len() >= 3 && before.iter().all(|e| e.account_id.is_empty()), "anonymous: no account");
            assert!(std::ptr::eq(*before.last().unwrap(), *id), "the identify is the visitor's last event");
            let known = events.iter().find(|e| e.contact_id == i.contact_id).unwrap();
            assert!(matches!(known.interaction, Some(Interaction::ProfileUpdate(_))), "known: profile first");
        }
        // Without anonymous visitors the stream is the one it always was.
        let mut plain = Simulator::new(&SimConfig { contacts: 200, ..SimConfig::default() });
        assert!((0..2000).all(|i| plain.next_event(i).contact_id.starts_with("c-")));
    }
}
