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
//! (profile first, as any contact).
//!
//! With [`SimConfig::buying_groups`], contacts belong to accounts the way
//! B2B buyers do:
//!
//! - an account has 1 to 8 contacts, small accounts more common than large
//!   ones ([`ACCOUNT_SIZES`]), drawn from the whole population, so an
//!   account mixes busy and quiet contacts;
//! - each contact has a [`Role`] in its account's buying group (an account
//!   of two or more has one decision maker and one champion; the rest are
//!   influencers and users) and a [`Seniority`] that fits the role; its
//!   profile update says both (`role`, `seniority`) with a job title of that
//!   seniority and the account's industry, company size and country;
//! - activity is correlated: a few accounts at a time are *in market*, and
//!   [`GROUP_SHARE`] of the events come from their buying groups, several
//!   contacts of one account active in the same stretch of the stream. The
//!   champion works toward a demo request, the decision maker looks at
//!   pricing and asks sales, influencers and users study the docs. When an
//!   account's stretch ends another account goes in market.
//!
//! Invariants:
//! - The same configuration (seed included) gives the same contacts,
//!   personas, accounts, roles and sequence of events.
//! - Every event of a known contact carries its account's id, and a
//!   contact's account never changes; anonymous events carry none.
//! - A known contact's first event is its profile update, whatever draws it.
//! - Without buying groups the stream is the one this simulator always gave
//!   (`plain_stream_is_unchanged`): the library default keeps it, since
//!   tests and benchmarks compare against it; `hotlead simulate` turns
//!   buying groups on.

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
    /// Contacts in accounts as buying groups, with roles and correlated
    /// activity (see the module docs). `false`: contact `i` is in account
    /// `i mod contacts / 4` and there are no roles, the stream of old.
    pub buying_groups: bool,
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
            buying_groups: false,
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
    /// Accounts as buying groups, with buying groups on.
    groups: Option<Groups>,
    counter: u64,
    seed: u64,
}

/// A contact's part in its account's buying group, sent as the profile
/// attribute `role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Signs: owns the budget and the decision.
    DecisionMaker,
    /// Drives the evaluation inside the account.
    Champion,
    /// Has a say: evaluates and recommends.
    Influencer,
    /// Will use the product.
    User,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::DecisionMaker, Role::Champion, Role::Influencer, Role::User];

    /// The attribute value: `decision_maker`, `champion`, `influencer`,
    /// `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::DecisionMaker => "decision_maker",
            Role::Champion => "champion",
            Role::Influencer => "influencer",
            Role::User => "user",
        }
    }
}

/// How senior a contact is, sent as the profile attribute `seniority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seniority {
    /// Founders, C-level, VPs.
    Executive,
    /// Directors and heads of.
    Director,
    /// Managers.
    Manager,
    /// Individual contributors.
    IndividualContributor,
}

impl Seniority {
    /// The attribute value: `executive`, `director`, `manager`,
    /// `individual_contributor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Seniority::Executive => "executive",
            Seniority::Director => "director",
            Seniority::Manager => "manager",
            Seniority::IndividualContributor => "individual_contributor",
        }
    }

    /// Job titles of this seniority.
    fn titles(self) -> &'static [&'static str] {
        match self {
            Seniority::Executive => &["Founder", "CEO", "CTO", "VP Marketing", "VP Sales"],
            Seniority::Director => &["Director of Marketing", "Head of Growth", "Director of Engineering"],
            Seniority::Manager => &["Senior Manager", "Manager", "Marketing Manager"],
            Seniority::IndividualContributor => &["Engineer", "Analyst", "Marketing Specialist", "Student"],
        }
    }
}

/// Relative frequency of account sizes 1 to 8 (contacts per account) with
/// buying groups: small accounts are the most common, a few have eight.
pub const ACCOUNT_SIZES: [u32; 8] = [22, 20, 17, 13, 10, 8, 6, 4];

/// Share of events that come from the buying groups of accounts in market,
/// with buying groups on; the rest are drawn by activity as without.
pub const GROUP_SHARE: f64 = 0.3;

/// Accounts in market at once: one for every this many accounts of two or
/// more contacts, at least 1, at most [`MAX_IN_MARKET`].
const ACCOUNTS_PER_IN_MARKET: usize = 30;
const MAX_IN_MARKET: usize = 10;
/// Events per member of a buying group while its account is in market.
const EPISODE_EVENTS_PER_MEMBER: std::ops::RangeInclusive<u32> = 6..=12;

/// One account with buying groups.
#[derive(Debug, Clone)]
struct Account {
    /// Its contacts (indices), the decision maker first, then the champion.
    members: Vec<usize>,
    industry: &'static str,
    company_size: &'static str,
    country: &'static str,
}

/// An account in market: which of its contacts take part, how far each
/// is, and how many events are left.
#[derive(Debug, Clone)]
struct Episode {
    account: usize,
    members: Vec<usize>,
    steps: Vec<u32>,
    left: u32,
}

/// Accounts, roles and who is in market, with buying groups on.
#[derive(Debug, Clone)]
struct Groups {
    rng: ChaCha8Rng,
    /// Account of each contact.
    account_of: Vec<usize>,
    /// Role, seniority and job title of each contact.
    people: Vec<(Role, Seniority, &'static str)>,
    accounts: Vec<Account>,
    /// Accounts of two contacts or more: the ones that go in market.
    multi: Vec<usize>,
    /// Accounts in market now.
    episodes: Vec<Episode>,
}

impl Groups {
    /// Contacts dealt into accounts of skewed sizes, in an order shuffled
    /// by the seed, with roles; the first accounts put in market.
    fn new(n: usize, seed: u64) -> Self {
        // A generator of its own: personas are the same with or without.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6163_6374);
        let mut order: Vec<usize> = (0..n).collect();
        for k in (1..n).rev() {
            order.swap(k, rng.random_range(0..=k));
        }
        let total: u32 = ACCOUNT_SIZES.iter().sum();
        let mut accounts = Vec::new();
        let mut account_of = vec![0; n];
        let mut people = vec![(Role::User, Seniority::IndividualContributor, ""); n];
        let mut rest = &order[..];
        while !rest.is_empty() {
            let mut r = rng.random_range(0..total);
            let mut size = 1;
            for (k, w) in ACCOUNT_SIZES.iter().enumerate() {
                if r < *w {
                    size = k + 1;
                    break;
                }
                r -= w;
            }
            let (members, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            let a = accounts.len();
            for (k, &i) in members.iter().enumerate() {
                account_of[i] = a;
                let role = match k {
                    _ if members.len() == 1 => {
                        [Role::Champion, Role::User, Role::DecisionMaker][rng.random_range(0..3)]
                    }
                    0 => Role::DecisionMaker,
                    1 => Role::Champion,
                    _ if rng.random_bool(0.4) => Role::Influencer,
                    _ => Role::User,
                };
                let seniority = seniority_of(role, rng.random());
                let titles = seniority.titles();
                people[i] = (role, seniority, titles[rng.random_range(0..titles.len())]);
            }
            accounts.push(Account {
                members: members.to_vec(),
                industry: INDUSTRIES[rng.random_range(0..INDUSTRIES.len())],
                company_size: SIZES[(members.len() / 2 + rng.random_range(0..2)).min(SIZES.len() - 1)],
                country: COUNTRIES[rng.random_range(0..COUNTRIES.len())],
            });
        }
        let multi: Vec<usize> = (0..accounts.len()).filter(|&a| accounts[a].members.len() > 1).collect();
        let mut g = Groups { rng, account_of, people, accounts, multi, episodes: Vec::new() };
        let in_market =
            if g.multi.is_empty() { 0 } else { (g.multi.len() / ACCOUNTS_PER_IN_MARKET).clamp(1, MAX_IN_MARKET) };
        for _ in 0..in_market {
            let e = g.episode();
            g.episodes.push(e);
        }
        g
    }

    /// A new account in market, not one in market now when another is
    /// free: its decision maker and champion and about half the others.
    fn episode(&mut self) -> Episode {
        let busy: Vec<usize> = self.episodes.iter().map(|e| e.account).collect();
        let free: Vec<usize> = self.multi.iter().copied().filter(|a| !busy.contains(a)).collect();
        let pool = if free.is_empty() { &self.multi } else { &free };
        let account = pool[self.rng.random_range(0..pool.len())];
        let all = &self.accounts[account].members;
        let members: Vec<usize> =
            all.iter().enumerate().filter(|&(k, _)| k < 2 || self.rng.random_bool(0.5)).map(|(_, &i)| i).collect();
        let left = members.len() as u32 * self.rng.random_range(EPISODE_EVENTS_PER_MEMBER);
        Episode { account, steps: vec![0; members.len()], members, left }
    }

    /// A contact of an account in market and its step there, or `None`
    /// (by [`GROUP_SHARE`]) for a draw by activity.
    fn draw(&mut self, rng: &mut ChaCha8Rng) -> Option<(usize, u32)> {
        if self.episodes.is_empty() || !rng.random_bool(GROUP_SHARE) {
            return None;
        }
        let e = rng.random_range(0..self.episodes.len());
        let ep = &mut self.episodes[e];
        let m = rng.random_range(0..ep.members.len());
        let drawn = (ep.members[m], ep.steps[m]);
        ep.steps[m] += 1;
        ep.left = ep.left.saturating_sub(1);
        if ep.left == 0 {
            self.episodes.remove(e);
            let next = self.episode();
            self.episodes.insert(e, next);
        }
        Some(drawn)
    }
}

/// A seniority that fits `role`, from a uniform draw `u` in [0, 1).
fn seniority_of(role: Role, u: f64) -> Seniority {
    match role {
        Role::DecisionMaker if u < 0.7 => Seniority::Executive,
        Role::DecisionMaker => Seniority::Director,
        Role::Champion if u < 0.4 => Seniority::Director,
        Role::Champion => Seniority::Manager,
        Role::Influencer if u < 0.5 => Seniority::Manager,
        Role::Influencer => Seniority::IndividualContributor,
        Role::User if u < 0.2 => Seniority::Manager,
        Role::User => Seniority::IndividualContributor,
    }
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
            groups: config.buying_groups.then(|| Groups::new(n, config.seed)),
            counter: 0,
            seed: config.seed,
        }
    }

    /// The persona of contact `index`.
    pub fn persona(&self, index: usize) -> Persona {
        self.personas[index]
    }

    /// The id of the account of contact `index`.
    pub fn account_id(&self, index: usize) -> String {
        let a = self.groups.as_ref().map_or(index % self.accounts, |g| g.account_of[index]);
        format!("acct-{a:05}")
    }

    /// The role of contact `index` in its account's buying group (`None`
    /// without buying groups).
    pub fn role(&self, index: usize) -> Option<Role> {
        self.groups.as_ref().map(|g| g.people[index].0)
    }

    /// The ids of the accounts in market now (none without buying groups).
    pub fn accounts_in_market(&self) -> Vec<String> {
        let Some(g) = &self.groups else { return Vec::new() };
        g.episodes.iter().map(|e| format!("acct-{:05}", e.account)).collect()
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
        let group = self.groups.as_mut().and_then(|g| g.draw(&mut self.rng));
        let i = match group {
            Some((i, _)) => i,
            None => {
                let u: f64 = self.rng.random();
                self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
            }
        };
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
            let interaction = match group {
                _ if step == 0 => self.profile(i),
                Some((_, k)) => {
                    let role = self.role(i).expect("a buying group member has a role");
                    self.in_market(role, k)
                }
                None => self.interaction(self.personas[i], step),
            };
            (Self::contact_id(i), self.account_id(i), interaction)
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
        if let Some(g) = &self.groups {
            let (role, seniority, title) = g.people[i];
            let a = &g.accounts[g.account_of[i]];
            let mut attributes = BTreeMap::new();
            attributes.insert("job_title".into(), title.into());
            attributes.insert("industry".into(), a.industry.into());
            attributes.insert("company_size".into(), a.company_size.into());
            attributes.insert("country".into(), a.country.into());
            attributes.insert("role".into(), role.as_str().into());
            attributes.insert("seniority".into(), seniority.as_str().into());
            return Interaction::ProfileUpdate(ProfileUpdate { attributes });
        }
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

    /// What a member of a buying group does at its step `k` while its
    /// account is in market.
    fn in_market(&mut self, role: Role, k: u32) -> Interaction {
        const TUTORIALS: &[&str] = &["/docs/tutorials/first-model", "/docs/tutorials/tiers"];
        match role {
            Role::Champion => match k {
                0 => {
                    let url = BLOG[self.rng.random_range(0..BLOG.len())];
                    self.page(url)
                }
                1 | 4 => self.page("/pricing"),
                2 => {
                    let url = TUTORIALS[self.rng.random_range(0..TUTORIALS.len())];
                    self.page(url)
                }
                3 => self.webinar(true),
                5 => self.form("demo-request"),
                _ => match self.rng.random_range(0..4) {
                    0 => self.page("/pricing"),
                    1 => self.email(Action::Click),
                    2 => {
                        let url = DOCS[self.rng.random_range(0..DOCS.len())];
                        self.page(url)
                    }
                    _ => self.form("contact-sales"),
                },
            },
            Role::DecisionMaker => match k {
                0 => self.page("/pricing"),
                1 => self.email(Action::Click),
                _ => match self.rng.random_range(0..4) {
                    0 => self.page("/pricing"),
                    1 => self.email(Action::Click),
                    2 => {
                        let url = BLOG[self.rng.random_range(0..BLOG.len())];
                        self.page(url)
                    }
                    _ => self.form("contact-sales"),
                },
            },
            Role::Influencer => match self.rng.random_range(0..6) {
                0..=1 => {
                    let url = DOCS[self.rng.random_range(0..DOCS.len())];
                    self.page(url)
                }
                2 => Interaction::ContentDownload(ContentDownload {
                    asset_id: "ebook-lead-scoring".into(),
                    asset_type: "ebook".into(),
                }),
                3 => self.webinar(true),
                4 => self.page("/pricing"),
                _ => self.email(Action::Open),
            },
            Role::User => match self.rng.random_range(0..6) {
                0..=2 => {
                    let url = DOCS[self.rng.random_range(0..DOCS.len())];
                    self.page(url)
                }
                3 => self.form("newsletter-signup"),
                4 => {
                    let url = BLOG[self.rng.random_range(0..BLOG.len())];
                    self.page(url)
                }
                _ => self.email(Action::Open),
            },
        }
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

    /// A digest of the first 3,000 events of a configuration.
    fn fingerprint(cfg: &SimConfig) -> String {
        use prost::Message;
        use sha2::{Digest, Sha256};
        let mut s = Simulator::new(cfg);
        let mut h = Sha256::new();
        for i in 0..3000 {
            h.update(s.next_event(1_760_000_000_000 + i * 60_000).encode_to_vec());
        }
        h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn plain_stream_is_unchanged() {
        // Tests and benchmarks score the default stream and compare: it is
        // the stream this simulator gave before buying groups existed.
        assert_eq!(fingerprint(&SimConfig::default()), "d6d8aa23fc74b5fc");
        let demo = SimConfig { contacts: 150, anonymous_share: 0.2, ..SimConfig::default() };
        assert_eq!(fingerprint(&demo), "af8a184abfa8695a");
        assert_ne!(fingerprint(&SimConfig { buying_groups: true, ..demo }), "af8a184abfa8695a");
    }

    fn grouped(contacts: usize, seed: u64) -> SimConfig {
        SimConfig { contacts, seed, buying_groups: true, anonymous_share: 0.2, ..SimConfig::default() }
    }

    /// Index of a known contact's id.
    fn index(contact: &str) -> Option<usize> {
        contact.strip_prefix("c-")?.parse().ok()
    }

    #[test]
    fn buying_groups_have_several_contacts_with_roles_in_their_profiles() {
        let mut s = Simulator::new(&grouped(2000, 42));
        let events: Vec<InteractionEvent> = (0..40_000).map(|i| s.next_event(i)).collect();
        let mut members: BTreeMap<String, std::collections::BTreeSet<usize>> = BTreeMap::new();
        let mut roles: BTreeMap<String, usize> = BTreeMap::new();
        let mut first = std::collections::BTreeSet::new();
        for e in &events {
            let Some(i) = index(&e.contact_id) else {
                assert!(e.account_id.is_empty(), "an anonymous visitor has no account");
                continue;
            };
            assert_eq!(e.account_id, s.account_id(i), "a contact's events all carry its one account");
            members.entry(e.account_id.clone()).or_default().insert(i);
            if first.insert(i) {
                let Some(Interaction::ProfileUpdate(p)) = &e.interaction else { panic!("profile first: {e:?}") };
                let role = &p.attributes["role"];
                assert_eq!(Some(role.as_str()), s.role(i).map(Role::as_str));
                assert!(p.attributes.contains_key("seniority") && p.attributes.contains_key("job_title"));
                *roles.entry(role.clone()).or_default() += 1;
            }
        }
        assert_eq!(roles.keys().cloned().collect::<Vec<_>>(), ["champion", "decision_maker", "influencer", "user"]);
        let sizes: Vec<usize> = members.values().map(|m| m.len()).collect();
        assert!(sizes.iter().all(|&n| (1..=8).contains(&n)), "{sizes:?}");
        let several = sizes.iter().filter(|&&n| n >= 2).count();
        assert!(several * 2 > sizes.len(), "most active accounts have several contacts: {several} of {}", sizes.len());
        assert!(sizes.iter().any(|&n| n >= 6), "some large buying groups");
        // Contacts of one account share its firmographics.
        let mut firm: BTreeMap<&str, (String, String)> = BTreeMap::new();
        for e in &events {
            if let Some(Interaction::ProfileUpdate(p)) = &e.interaction {
                let f = (p.attributes["industry"].clone(), p.attributes["company_size"].clone());
                assert_eq!(firm.entry(&e.account_id).or_insert_with(|| f.clone()), &f);
            }
        }
    }

    #[test]
    fn accounts_in_market_have_several_contacts_active_together() {
        // In windows of 500 events, accounts with three or more contacts
        // active: buying groups make them common, the plain stream (contact
        // i in account i mod n/4) rare.
        let together = |cfg: &SimConfig| {
            let mut s = Simulator::new(cfg);
            let events: Vec<InteractionEvent> = (0..30_000).map(|i| s.next_event(i)).collect();
            events
                .chunks(500)
                .map(|w| {
                    let mut active: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
                    for e in w.iter().filter(|e| !e.account_id.is_empty()) {
                        active.entry(&e.account_id).or_default().insert(&e.contact_id);
                    }
                    active.values().filter(|c| c.len() >= 3).count()
                })
                .sum::<usize>()
        };
        let with_groups = together(&grouped(2000, 42));
        let plain = together(&SimConfig { anonymous_share: 0.2, ..SimConfig::default() });
        assert!(with_groups > 3 * plain.max(10), "with buying groups {with_groups}, plain {plain}");
        // The champions of accounts in market reach the demo request.
        let mut s = Simulator::new(&grouped(2000, 42));
        let events: Vec<InteractionEvent> = (0..30_000).map(|i| s.next_event(i)).collect();
        let demos = events
            .iter()
            .filter(|e| matches!(&e.interaction, Some(Interaction::FormSubmission(f)) if f.form_id == "demo-request"))
            .filter(|e| index(&e.contact_id).and_then(|i| s.role(i)) == Some(Role::Champion))
            .count();
        assert!(demos >= 5, "{demos}");
    }

    #[test]
    fn buying_groups_are_the_same_for_the_same_seed() {
        let (mut a, mut b) = (Simulator::new(&grouped(500, 9)), Simulator::new(&grouped(500, 9)));
        for i in 0..5000 {
            assert_eq!(a.next_event(i), b.next_event(i));
        }
        assert_eq!(a.accounts_in_market(), b.accounts_in_market());
        assert_ne!(fingerprint(&grouped(500, 9)), fingerprint(&grouped(500, 10)));
    }

    proptest::proptest! {
        /// Any population and seed: accounts of 1 to 8 contacts, one
        /// decision maker and one champion in every account of two or more,
        /// and a contact's account the same on all its events.
        #[test]
        fn accounts_are_well_formed(contacts in 1usize..300, seed in 0u64..1000) {
            let mut s = Simulator::new(&grouped(contacts, seed));
            let g = s.groups.clone().unwrap();
            let mut seen = vec![false; contacts];
            for a in &g.accounts {
                proptest::prop_assert!((1..=8).contains(&a.members.len()));
                let roles: Vec<Role> = a.members.iter().map(|&i| g.people[i].0).collect();
                if roles.len() > 1 {
                    proptest::prop_assert_eq!(&roles[..2], &[Role::DecisionMaker, Role::Champion]);
                    proptest::prop_assert!(roles[2..].iter().all(|r| matches!(r, Role::Influencer | Role::User)));
                }
                for &i in &a.members {
                    proptest::prop_assert!(!seen[i], "contact {} in two accounts", i);
                    seen[i] = true;
                }
            }
            proptest::prop_assert!(seen.iter().all(|x| *x));
            for t in 0..300 {
                let e = s.next_event(t);
                if let Some(i) = index(&e.contact_id) {
                    proptest::prop_assert_eq!(&e.account_id, &format!("acct-{:05}", g.account_of[i]));
                }
            }
        }
    }
}
